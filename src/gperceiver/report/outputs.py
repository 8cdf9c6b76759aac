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
from ..importance import marker_importance
from .html import evaluation_report, finetune_report
from .plots import read_learning_curves


def first_fold_curves(models_dir: Path) -> dict:
    """Learning curves of each neural method's first fold (one panel per model)."""
    curves = {}
    for method_dir in sorted(p for p in models_dir.glob("*") if p.is_dir()):
        folds = sorted(method_dir.glob("fold-*"), key=lambda p: natural_key(p.name))
        for name, frame in (read_learning_curves(folds[0]) if folds else {}).items():
            curves[f"{method_dir.name} {folds[0].name} {name}"] = frame
    return curves


def fold_importance(models_dir: Path, genotypes: Genotypes, methods):
    """Marker importance of the neural models, averaged over folds (or None)."""
    neural = [m for m in methods if m.startswith("perceiver")]
    if not neural:
        return None
    folds = sorted((models_dir / neural[-1]).glob("fold-*"))
    values = [marker_importance(load_predictor(f).members, genotypes) for f in folds]
    return (np.mean(values, 0), genotypes.markers) if values else None


def write_evaluation(
    out,
    predictions: pd.DataFrame,
    accuracy: pd.DataFrame,
    genotypes: Genotypes,
    methods: list[str],
    components: list[pd.DataFrame] = (),
) -> None:
    """``predictions.tsv``, ``accuracy.tsv``, ``variance_components.tsv`` (the
    kernel fits' ``components``, if any), the figures and ``report.html`` of a
    cross-validation into ``out``; the neural methods' models are read from
    ``out/models`` (where ``cross_validate`` was told to keep them)."""
    out = Path(out)
    importance = fold_importance(out / "models", genotypes, methods)
    io.write_table(predictions, out / "predictions.tsv")
    io.write_table(accuracy, out / "accuracy.tsv", float_format="%.4f")
    if len(components):
        table = pd.concat(components, ignore_index=True)
        io.write_table(table, out / "variance_components.tsv")
    curves = first_fold_curves(out / "models")
    evaluation_report(out, predictions, accuracy, NOTES, curves, importance)


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
    blocks = phenotypes.blocks
    if covariates is not None:  # environments without records are predicted too
        blocks = np.union1d(blocks, covariates.blocks)
    table = prediction_table(predictor, genotypes, blocks)
    merged = table.merge(phenotypes.table, on=["name", "block"], how="left")
    if predictions:
        io.write_table(merged, predictions)
    importance = (marker_importance(predictor.members, genotypes), genotypes.markers)
    finetune_report(out, read_learning_curves(out), importance, merged)
