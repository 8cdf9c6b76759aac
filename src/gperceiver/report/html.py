"""A self-contained HTML report of evaluation and finetuning runs: one HTML file
with the figures embedded (:func:`write_report`), so it can be mailed or archived
on its own."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import MarkerMap
from ..evaluate import POOLED, pooled_table
from ..io import atomic_path
from .plots import (
    plot_accuracy,
    plot_learning_curves,
    plot_marker_importance,
    plot_observed_vs_predicted,
)


@dataclass
class Section:
    """A part of :func:`write_report`, shown in this order: heading, paragraphs
    (plain text), figures (PNG files, embedded) and tables (caption -> table)."""

    heading: str
    paragraphs: Sequence[str] = ()
    figures: Sequence[Path] = ()
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 64rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.5; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.5rem;
     border-bottom: 1px solid #ccc; }
.meta { color: #666; }
img { max-width: 100%; height: auto; display: block; margin: 1rem 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
th, td { padding: 0.2rem 0.7rem; text-align: right; border-bottom: 1px solid #ddd; }
"""


def _section_html(section: Section) -> str:
    parts = [f"<section>\n<h2>{html.escape(section.heading)}</h2>"]
    parts += [f"<p>{html.escape(text)}</p>" for text in section.paragraphs]
    for figure in section.figures:
        data = base64.b64encode(Path(figure).read_bytes()).decode("ascii")
        alt = html.escape(Path(figure).stem.replace("_", " "))
        parts.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
    for caption, table in section.tables.items():
        table_html = table.to_html(
            border=0, na_rep="–", index_names=False, float_format=lambda v: f"{v:.3f}"
        )
        caption_html = f"<caption>{html.escape(caption)}</caption>"
        # the caption goes right after the opening <table ...> tag
        parts.append(table_html.replace(">", ">\n" + caption_html, 1))
    parts.append("</section>")
    return "\n".join(parts)


def write_report(path, title: str, sections: Sequence[Section]) -> Path:
    """Write one self-contained HTML page: figures as base64 PNG data URIs, tables
    as HTML, no other file referenced. Written atomically; returns ``path``."""
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    body = "\n".join(_section_html(s) for s in sections)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n"
        f'<p class="meta">Written by gperceiver on {stamp}.</p>\n{body}\n'
        "</body>\n</html>\n"
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


ACCURACY_TEXT = (
    "Every individual was predicted by a model that never saw its phenotype: the "
    "individuals are split into groups (the cv column) and each group in turn is "
    "predicted by a model trained on all the others. Pearson r measures how well "
    "these predictions line up with the observed values: 1 is a perfect "
    "straight-line match, 0 no relation at all. Pooled r is computed once over the "
    "predictions of all folds together, separately for each block (environment, "
    "trial or year); the mean column averages the blocks. Since a phenotype also "
    "holds non-genetic noise, r cannot reach 1: its ceiling is about the square "
    "root of the heritability."
)
BASELINE_TEXT = (
    "GBLUP (genomic BLUP from the genomic relationship matrix, the standard method "
    "of breeding programmes) is the baseline. It was fitted on exactly the same "
    "folds as every other method, so the comparison is like for like: a new method "
    "is worth its cost only if it beats GBLUP clearly and in most blocks."
)
NO_BASELINE_TEXT = (
    "GBLUP, the usual baseline, was not run; add gblup to the methods to compare "
    "against it on the same folds."
)
SPREAD_TEXT = (
    "The second table gives the mean and standard deviation of r over the single "
    "folds: differences between methods much smaller than this spread may be "
    "chance."
)
SCATTER_TEXT = (
    "Each point is one individual in one block, predicted while it was held out. "
    "Points along a rising line mean useful predictions; a shapeless cloud means "
    "none. Predictions are often shrunk towards the mean, which does not matter "
    "for selection: r and the ranking of candidates ignore the scale."
)
CURVES_TEXT = (
    "How the network's error changed while it trained, one panel per training run. "
    "The solid line is the error on the individuals it learns from, the dashed "
    "line on individuals held back to decide when to stop; the dot marks the "
    "lowest held-back error, whose weights are kept. A dashed line that rises "
    "while the solid one keeps falling means the model began to memorise its "
    "training individuals (over-fitting); lines that stay flat mean it learned "
    "little. With the default squared error on standardised phenotypes, about 1.0 "
    "is what always predicting the average scores."
)
PHASE1_CURVES_TEXT = (
    "Runs named phase1 train only the new prediction head on top of the frozen "
    "pretrained encoder; the run after it then adjusts the encoder too."
)
PRETRAINED_CURVES_TEXT = (
    "The pretrained panel shows masked-marker pretraining (guessing hidden "
    "genotypes, no phenotypes): its loss is on another scale."
)
EVALUATE_CURVES_TEXT = (
    "Here the held-back individuals come from the training folds only, never from "
    "the fold being predicted, so the accuracy above stays honest."
)
IMPORTANCE_TEXT = (
    "Which markers the trained network's predictions depend on. For each "
    "individual and marker, the sensitivity of the prediction to the marker's "
    "input is multiplied by how far the individual's alleles at that marker are "
    "from the population average (gradient times input, a standard attribution "
    "method); the plot shows the average size of this over individuals, scaled so "
    "the largest is 1. Peaks point to genome regions the model relies on."
)
IMPORTANCE_PARTS_TEXT = (
    "The model adds an exact additive path (GBLUP or RKHS fitted by REML) to the "
    "network, and both count: the top panel credits each marker with its summed "
    "effect through the two, the others show the additive path and the network "
    "alone, on the same scale. For the linear (GBLUP) path a marker's credit is "
    "its allele effect times how far an individual's dosage is from the mean. "
    "The numbers are in marker_importance.tsv (columns total, network, additive)."
)
IMPORTANCE_CAVEATS = (
    "Caveats: this describes the model, not the biology. It is not a QTL or GWAS "
    "test and has no p-values. Markers in linkage disequilibrium share the credit, "
    "so a peak may sit on a neighbour of the causal locus, and one causal region "
    "may show as a broad hill. It is a local measure, so interactions between "
    "markers show only in part. Markers where every individual carries the same "
    "alleles score 0, and a model that predicts poorly has importances that mean "
    "little."
)
FITTED_TEXT = (
    "Observed against predicted for the phenotyped individuals. Nearly all of them "
    "were used to train the model, so this agreement is optimistic: it shows how "
    "well the model fits, not how well it predicts new individuals. Use gperceiver "
    "evaluate for an honest estimate."
)


def _fold_spread(accuracy: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """``mean ± sd`` of per-fold r as a ``method x block`` table of strings."""
    folds = accuracy[accuracy["fold"] != POOLED]
    stats = folds.groupby(["method", "block"])["pearson_r"].agg(["mean", "std"])
    text = stats.apply(lambda row: f"{row['mean']:.3f} ± {row['std']:.3f}", axis=1)
    table = text.unstack("block").reindex(methods)
    table.columns = [f"block {b}" for b in table.columns]
    return table


def _accuracy_section(out: Path, predictions, accuracy, notes: dict) -> Section:
    methods = list(dict.fromkeys(predictions["method"]))
    first = predictions[predictions["method"] == methods[0]]
    n_folds = accuracy.loc[accuracy["fold"] != POOLED, "fold"].nunique()
    summary = (
        f"{first['name'].nunique()} individuals, {len(first)} records in "
        f"{first['block'].nunique()} block(s), {n_folds} fold(s); methods: "
        f"{', '.join(methods)}."
    )
    paragraphs = [summary, ACCURACY_TEXT]
    paragraphs.append(BASELINE_TEXT if "gblup" in methods else NO_BASELINE_TEXT)
    tables = {"Pearson r, pooled over folds": pooled_table(accuracy)}
    if n_folds > 1:
        paragraphs.append(SPREAD_TEXT)
        tables["Pearson r over single folds (mean ± sd)"] = _fold_spread(
            accuracy, methods
        )
    paragraphs += [f"Note on {m}: {notes[m]}." for m in methods if m in notes]
    figure = plot_accuracy(accuracy, out / "accuracy.png")
    return Section("Prediction accuracy", paragraphs, [figure], tables)


def _curves_section(out: Path, curves: dict, extra: Sequence[str] = ()) -> Section:
    paragraphs = [CURVES_TEXT, *extra]
    if any(name.endswith("phase1") for name in curves):
        paragraphs.append(PHASE1_CURVES_TEXT)
    if any(name.startswith("pretrained") for name in curves):
        paragraphs.append(PRETRAINED_CURVES_TEXT)
    figure = plot_learning_curves(curves, out / "learning_curves.png")
    return Section("Learning curves", paragraphs, [figure])


def _importance_section(out: Path, importance, markers: MarkerMap, n_top: int = 10):
    figure = plot_marker_importance(importance, markers, out / "marker_importance.png")
    parts = importance if isinstance(importance, dict) else {"total": importance}
    parts = {k: np.asarray(v, dtype=np.float64) for k, v in parts.items()}
    total = parts["total"]
    top = np.argsort(-total, kind="stable")[:n_top]
    table = markers.subset(top).to_frame()
    if (table["pos"] == table["pos"].round()).all():  # bp or an order: no decimals
        table["pos"] = table["pos"].astype(np.int64)
    scale = max(v.max() for v in parts.values()) or 1.0
    table["importance"] = total[top] / scale
    for part in ("additive", "network"):
        if part in parts and parts["additive"].max() > 0:
            table[part] = parts[part][top] / scale
    table.index = pd.RangeIndex(1, len(top) + 1, name="rank")
    caption = f"The {len(top)} most important markers (largest = 1)"
    paragraphs = [IMPORTANCE_TEXT]
    if "additive" in parts and parts["additive"].max() > 0:
        paragraphs.append(IMPORTANCE_PARTS_TEXT)
    return Section(
        "Marker importance",
        [*paragraphs, IMPORTANCE_CAVEATS],
        [figure],
        {caption: table},
    )


def evaluation_report(
    out_dir,
    predictions: pd.DataFrame,
    accuracy: pd.DataFrame,
    notes: dict[str, str] | None = None,
    curves: dict[str, pd.DataFrame] | None = None,
    importance: tuple[np.ndarray, MarkerMap] | None = None,
    lead: Sequence[Section] = (),
    fits: Sequence[Section] = (),
) -> Path:
    """Figures and ``report.html`` of a cross-validation, written into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Receives ``accuracy.png``, ``observed_vs_predicted.png``, and with
        ``curves`` / ``importance`` also ``learning_curves.png`` /
        ``marker_importance.png``, then ``report.html``.
    predictions, accuracy : DataFrame
        As returned by :func:`gperceiver.evaluate.cross_validate`.
    notes : dict of str to str, optional
        Method -> remark (e.g. :data:`gperceiver.evaluate.NOTES`); remarks on
        methods that were not evaluated are left out.
    curves : dict of str to DataFrame, optional
        Learning curves of the neural models (:func:`read_learning_curves`).
    importance : (array (M,) or dict of str to array (M,), MarkerMap), optional
        Marker importance and its map (:func:`gperceiver.importance.marker_importance`,
        or its parts, :func:`gperceiver.importance.importance_parts`).
    lead, fits : sequence of Section
        Shown before the accuracy (the data summary) and after observed against
        predicted (what the fits estimated, :mod:`.summary`).

    Returns
    -------
    Path
        The ``report.html`` written.
    """
    out = Path(out_dir)
    scatter = plot_observed_vs_predicted(predictions, out / "observed_vs_predicted.png")
    sections = [
        *lead,
        _accuracy_section(out, predictions, accuracy, notes or {}),
        Section("Observed against predicted", [SCATTER_TEXT], [scatter]),
        *fits,
    ]
    if curves:
        sections.append(_curves_section(out, curves, [EVALUATE_CURVES_TEXT]))
    if importance is not None:
        sections.append(_importance_section(out, *importance))
    return write_report(out / "report.html", "gperceiver evaluation report", sections)


def finetune_report(
    out_dir,
    curves: dict[str, pd.DataFrame],
    importance: tuple[np.ndarray, MarkerMap] | None = None,
    predictions: pd.DataFrame | None = None,
    lead: Sequence[Section] = (),
) -> Path:
    """Figures and ``report.html`` of a finetuned model, written into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Usually the model directory; receives ``learning_curves.png``,
        ``marker_importance.png`` and ``observed_vs_predicted.png`` where their
        inputs are given, then ``report.html``.
    curves : dict of str to DataFrame
        Learning curves (``read_learning_curves(out_dir)``).
    importance : (array (M,) or dict of str to array (M,), MarkerMap), optional
        Marker importance and its map (:func:`gperceiver.importance.marker_importance`,
        or its parts, :func:`gperceiver.importance.importance_parts`).
    predictions : DataFrame, optional
        Columns ``block``, ``prediction``, ``response`` (rows without a response
        are dropped) and optionally ``method``: fitted values of the training data.
    lead : sequence of Section
        Shown first (the data summary, :mod:`.summary`).

    Returns
    -------
    Path
        The ``report.html`` written.
    """
    out = Path(out_dir)
    sections = list(lead)
    if curves:
        sections.append(_curves_section(out, curves))
    if importance is not None:
        sections.append(_importance_section(out, *importance))
    fitted = None if predictions is None else predictions.dropna(subset=["response"])
    if fitted is not None and len(fitted):
        if "method" not in fitted:
            fitted = fitted.assign(method="perceiver")
        scatter = plot_observed_vs_predicted(fitted, out / "observed_vs_predicted.png")
        sections.append(Section("Fit to the training data", [FITTED_TEXT], [scatter]))
    return write_report(out / "report.html", "gperceiver finetuning report", sections)
