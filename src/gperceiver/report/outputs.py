"""Everything a command writes after its run: tables, figures and report of a
cross-validation (:func:`write_evaluation`) and of a finetuned model
(:func:`write_finetune_outputs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import io
from ..data import EnvCovariates, Genotypes, Phenotypes, natural_key
from ..evaluate import NOTES
from ..finetuning import load_predictor, prediction_table
from ..importance import importance_frame, importance_parts
from .html import evaluation_report, finetune_report
from .plots import read_learning_curves
from .summary import data_section, data_summary, heritability_section


def first_fold_curves(models_dir: Path) -> dict:
    """Learning curves of each neural method's first fold (one panel per model)."""
    curves = {}
    for method_dir in sorted(p for p in models_dir.glob("*") if p.is_dir()):
        folds = sorted(method_dir.glob("fold-*"), key=lambda p: natural_key(p.name))
        for name, frame in (read_learning_curves(folds[0]) if folds else {}).items():
            curves[f"{method_dir.name} {folds[0].name} {name}"] = frame
    return curves


# individuals each fold's model is attributed over in the report (evenly spaced):
# every fold's backward pass over every individual cost as much as the folds'
# training on wheat (10 x 599 rows), for a plot that averages them anyway
IMPORTANCE_INDIVIDUALS = 64


def fold_importance(models_dir: Path, genotypes: Genotypes, methods):
    """Marker importance of the last neural method's models by part
    (:func:`~gperceiver.importance.importance_parts`) over up to
    :data:`IMPORTANCE_INDIVIDUALS` evenly spaced individuals, averaged over folds,
    and the map (or None)."""
    neural = [m for m in methods if m.startswith("perceiver")]
    if not neural:
        return None
    folds = sorted((models_dir / neural[-1]).glob("fold-*"))
    n = genotypes.n_individuals
    rows = np.unique(np.linspace(0, n - 1, min(n, IMPORTANCE_INDIVIDUALS)).round())
    rows = rows.astype(np.int64)
    values = [
        importance_parts(load_predictor(f).members, genotypes, rows) for f in folds
    ]
    if not values:
        return None
    mean = {part: np.mean([v[part] for v in values], 0) for part in values[0]}
    return mean, genotypes.markers


def write_importance(out: Path, importance) -> None:
    """``marker_importance.tsv`` of ``(parts, MarkerMap)`` (if not None)."""
    if importance is not None:
        table = importance_frame(*importance)
        io.write_table(table, out / "marker_importance.tsv", float_format="%.6g")


def write_evaluation(
    out,
    predictions: pd.DataFrame,
    accuracy: pd.DataFrame,
    genotypes: Genotypes,
    methods: list[str],
    components: list[pd.DataFrame] = (),
    marker_effects: list[pd.DataFrame] = (),
    phenotypes: Phenotypes | None = None,
) -> None:
    """``predictions.tsv``, ``accuracy.tsv``, ``marker_importance.tsv`` (of the
    neural methods, if any), ``variance_components.tsv`` (the
    kernel fits' ``components``, if any), ``marker_effects.tsv`` (the GBLUP fits'
    rrBLUP allele effects, if any), the figures and ``report.html`` of a
    cross-validation into ``out``; the neural methods' models are read from
    ``out/models`` (where ``cross_validate`` was told to keep them). The
    report shows the components' h² over folds and, with ``phenotypes``, opens
    with a summary of the data."""
    out = Path(out)
    importance = fold_importance(out / "models", genotypes, methods)
    io.write_table(predictions, out / "predictions.tsv")
    io.write_table(accuracy, out / "accuracy.tsv", float_format="%.4f")
    lead, fits = [], []
    if phenotypes is not None:
        lead.append(data_section(out, data_summary(genotypes, phenotypes)))
    if len(components):
        table = pd.concat(components, ignore_index=True)
        io.write_table(table, out / "variance_components.tsv")
        fits = [s for s in [heritability_section(table)] if s is not None]
    if len(marker_effects):
        table = pd.concat(marker_effects, ignore_index=True)
        io.write_table(table, out / "marker_effects.tsv", float_format="%.6g")
    write_importance(out, importance)
    curves = first_fold_curves(out / "models")
    evaluation_report(out, predictions, accuracy, NOTES, curves, importance, lead, fits)


def _record_fixed_part(fixed, merged: pd.DataFrame) -> pd.DataFrame:
    """``merged`` (predictions beside the records) with ``fixed``, the fixed part
    of each record's levels (:class:`~gperceiver.baselines.FixedPart`), and its
    ``prediction`` = ``gebv`` + ``fixed`` in the rows that hold a record."""
    recorded = merged["response"].notna().to_numpy()
    part = np.full(len(merged), np.nan)
    part[recorded] = fixed.values(merged[recorded], warn=False)
    prediction = merged["prediction"].to_numpy().copy()
    prediction[recorded] = merged["gebv"].to_numpy()[recorded] + part[recorded]
    return merged.assign(prediction=prediction, fixed=part)


def write_finetune_outputs(
    out,
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    covariates: EnvCovariates | None = None,
    predictions=None,
    device=None,
) -> None:
    """The report of the finetuned model in ``out`` (fit to the training records,
    learning curves, marker importance) and, to ``predictions`` if given, its
    predictions for every individual x block (blocks with covariates included),
    next to the phenotype table's records. The model runs on ``device``
    (default the CPU)."""
    predictor = load_predictor(out, device=device)
    environments = phenotypes.environments
    if covariates is not None:  # environments without records are predicted too
        environments = np.union1d(environments, covariates.environments)
    table = prediction_table(predictor, genotypes, environments)
    merged = table.merge(phenotypes.table, on=["name", "block"], how="left")
    if predictor.fixed is not None:  # a record's prediction: its own fixed part
        merged = _record_fixed_part(predictor.fixed, merged)
    merged = phenotypes.named_environments(merged)  # environments by name
    if predictions:
        io.write_table(merged, predictions)
    importance = (importance_parts(predictor.members, genotypes), genotypes.markers)
    write_importance(Path(out), importance)
    lead = [data_section(Path(out), data_summary(genotypes, phenotypes))]
    finetune_report(out, read_learning_curves(out), importance, merged, lead)
