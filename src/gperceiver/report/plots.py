"""Figures (PNG) of evaluation and finetuning runs: accuracy, observed against
predicted, learning curves, marker importance along the genome.

Figures are drawn with matplotlib's Agg canvas (no display, no global pyplot
state) and written atomically: to a temporary file beside the target, then renamed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..data import MarkerMap, natural_key
from ..evaluate import POOLED, pearson, pooled_table
from ..io import atomic_path

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _save(figure: Figure, path) -> Path:
    FigureCanvasAgg(figure)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return path


def plot_observed_vs_predicted(predictions: pd.DataFrame, path) -> Path:
    """Observed response against prediction, one panel per block, one colour per method.

    Parameters
    ----------
    predictions : DataFrame
        Columns ``block``, ``method``, ``response``, ``prediction`` (as returned by
        :func:`gperceiver.evaluate.cross_validate`).
    path : str or Path
        PNG file to write.

    Returns
    -------
    Path
        ``path``.
    """
    environments = np.sort(predictions["block"].unique())
    methods = list(dict.fromkeys(predictions["method"]))
    figure = Figure(figsize=(3.6 * len(environments), 3.6), layout="constrained")
    axes = figure.subplots(1, len(environments), squeeze=False, sharey=False)[0]
    for ax, environment in zip(axes, environments, strict=True):
        in_environment = predictions[predictions["block"] == environment]
        for i, method in enumerate(methods):
            rows = in_environment[in_environment["method"] == method]
            r = pearson(rows["prediction"], rows["response"])
            ax.scatter(
                rows["prediction"],
                rows["response"],
                s=8,
                alpha=0.5,
                color=_colour(i),
                label=f"{method} (r = {r:.3f})",
            )
        ax.set_title(f"block {environment}")
        ax.set_xlabel("predicted")
        ax.legend(fontsize="small", loc="upper left")
    axes[0].set_ylabel("observed")
    return _save(figure, path)


def plot_accuracy(accuracy: pd.DataFrame, path) -> Path:
    """Pooled Pearson r by block (groups) and method (bars), plus the block mean.

    Parameters
    ----------
    accuracy : DataFrame
        Rows with ``fold == "all"`` are plotted (as returned by
        :func:`gperceiver.evaluate.cross_validate`).
    path : str or Path
        PNG file to write.

    Returns
    -------
    Path
        ``path``.
    """
    if not (accuracy["fold"] == POOLED).any():
        raise ValueError(f"accuracy has no pooled (fold = {POOLED!r}) rows")
    table = pooled_table(accuracy)
    n_methods, n_groups = table.shape
    width = 0.8 / n_methods
    x = np.arange(n_groups)
    figure = Figure(figsize=(1.2 + 1.1 * n_groups, 3.6), layout="constrained")
    ax = figure.subplots()
    for i, (method, values) in enumerate(table.iterrows()):
        ax.bar(
            x + (i - (n_methods - 1) / 2) * width,
            values.to_numpy(),
            width,
            color=_colour(i),
            label=method,
        )
    ax.set_xticks(x, table.columns)
    ax.set_ylabel("Pearson r (pooled over folds)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.legend(fontsize="small")
    return _save(figure, path)


def plot_maf_spectrum(spectrum: pd.DataFrame, path) -> Path:
    """Histogram of markers per minor-allele-frequency bin.

    Parameters
    ----------
    spectrum : DataFrame
        Columns ``maf`` (bin labels) and ``markers`` (counts), as
        :func:`gperceiver.report.summary.maf_spectrum` returns.
    path : str or Path
        PNG file to write.

    Returns
    -------
    Path
        ``path``.
    """
    figure = Figure(figsize=(6, 2.8), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(spectrum))
    ax.bar(x, spectrum["markers"].to_numpy(), 0.9, color=_colour(0))
    ax.set_xticks(x, spectrum["maf"], rotation=45, fontsize="small")
    ax.set_xlabel("minor allele frequency")
    ax.set_ylabel("markers")
    return _save(figure, path)


# -- marker importance and learning curves ---------------------------------------------
CHROM_COLOURS = ("#1f4e79", "#7fa7d1")  # alternate along the genome


def genome_x(markers: MarkerMap) -> tuple[np.ndarray, np.ndarray]:
    """Plot coordinates along the genome.

    Returns ``x`` (M,), each marker's position within its chromosome plus the
    spans of the chromosomes before it (and a small gap per chromosome), and the
    centre (C',) of each chromosome present, in natural order. With a single
    chromosome (such as an ``unplaced`` group) ``x`` is the map order ``0..M-1``.
    """
    present, which = np.unique(markers.chrom, return_inverse=True)
    if len(present) == 1:
        x = np.arange(len(markers), dtype=np.float64)
        return x, np.array([x.mean()])
    lo = np.full(len(present), np.inf)
    hi = np.full(len(present), -np.inf)
    np.minimum.at(lo, which, markers.pos)
    np.maximum.at(hi, which, markers.pos)
    spans = hi - lo
    gap = 0.02 * spans.sum() or 1.0
    starts = np.concatenate([[0.0], np.cumsum(spans + gap)[:-1]])
    return markers.pos - lo[which] + starts[which], starts + spans / 2


def relative_importance(importance: np.ndarray) -> np.ndarray:
    """Importance (M,) divided by its maximum (unchanged when all are 0)."""
    top = importance.max()
    return importance / top if top > 0 else importance


PART_LABELS = {
    "total": "network + additive path",
    "additive": "additive path (GBLUP / RKHS)",
    "network": "network",
}


def plot_marker_importance(importance, markers: MarkerMap, path) -> Path:
    """Manhattan-style plot of marker importance along the genome.

    Chromosomes sit side by side in natural order with alternating colours and
    are labelled at their centres (see :func:`genome_x`); importance is scaled so
    the largest is 1. Given the parts of
    :func:`gperceiver.importance.importance_parts`, one panel per part (total,
    additive path, network; a part that is 0 everywhere is left out), on one
    scale.

    Parameters
    ----------
    importance : array (M,) or dict of str to array (M,)
        Non-negative, in map order
        (:func:`gperceiver.importance.marker_importance`, or its parts).
    markers : MarkerMap
        The M markers.
    path : str or Path
        PNG file to write.

    Returns
    -------
    Path
        ``path``.
    """
    parts = importance if isinstance(importance, dict) else {"total": importance}
    parts = {k: np.asarray(v, dtype=np.float64) for k, v in parts.items()}
    for values in parts.values():
        if values.shape != (len(markers),):
            raise ValueError(
                f"importance has shape {values.shape}, the map {len(markers)} markers"
            )
    shown = {k: v for k, v in parts.items() if k == "total" or v.max() > 0}
    top = max(v.max() for v in shown.values())
    x, centres = genome_x(markers)
    present, which = np.unique(markers.chrom, return_inverse=True)
    figure = Figure(figsize=(10, 0.6 + 2.8 * len(shown)), layout="constrained")
    axes = figure.subplots(len(shown), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (part, values) in zip(axes, shown.items(), strict=True):
        ax.scatter(
            x,
            values / top if top > 0 else values,
            s=10 if len(markers) <= 5000 else 3,
            c=np.asarray(CHROM_COLOURS)[which % 2],
            linewidths=0,
        )
        ax.set_ylim(0.0, 1.05)
        ax.set_ylabel("importance (largest = 1)")
        if len(shown) > 1:
            ax.set_title(PART_LABELS.get(part, part), fontsize="small")
    ax = axes[-1]
    if len(present) > 1:
        ax.set_xticks(centres, [markers.chrom_names[c] for c in present])
        ax.set_xlabel("chromosome")
    else:
        ax.set_xlabel(f"marker in map order ({markers.chrom_names[present[0]]})")
    ax.set_xlim(x.min() - 0.01 * np.ptp(x) - 0.5, x.max() + 0.01 * np.ptp(x) + 0.5)
    return _save(figure, path)


def read_learning_curves(directory) -> dict[str, pd.DataFrame]:
    """Every ``metrics.csv`` under ``directory``, keyed by its folder relative to
    ``directory`` (e.g. ``member-0/train``), in natural order."""
    root = Path(directory)
    runs = {
        (p.parent.relative_to(root).as_posix() if p.parent != root else root.name): p
        for p in root.rglob("metrics.csv")
    }
    return {name: pd.read_csv(runs[name]) for name in sorted(runs, key=natural_key)}


def plot_learning_curves(metrics: dict[str, pd.DataFrame], path) -> Path:
    """Training (solid) and validation (dashed) loss against epoch, a panel per run.

    A dot marks the lowest monitored loss (validation, else training): the weights
    kept.

    Parameters
    ----------
    metrics : dict of str to DataFrame
        Run name -> a ``metrics.csv`` table with columns ``epoch``, ``train_loss``
        and optionally ``val_loss`` (see :func:`read_learning_curves`).
    path : str or Path
        PNG file to write.

    Returns
    -------
    Path
        ``path``.
    """
    if not metrics:
        raise ValueError("no learning curves to plot")
    n_cols = min(4, len(metrics))
    n_rows = math.ceil(len(metrics) / n_cols)
    figure = Figure(figsize=(3.2 * n_cols, 2.5 * n_rows), layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (name, frame) in zip(axes, metrics.items(), strict=False):
        epoch = frame["epoch"].to_numpy()
        ax.plot(epoch, frame["train_loss"], color=_colour(0), label="training")
        monitored, colour = frame["train_loss"], _colour(0)
        if "val_loss" in frame and frame["val_loss"].notna().any():
            monitored, colour = frame["val_loss"], _colour(1)
            ax.plot(epoch, monitored, "--", color=colour, label="validation")
        best = int(np.nanargmin(monitored.to_numpy(dtype=np.float64)))
        ax.plot(epoch[best], monitored.iloc[best], "o", color=colour, label="kept")
        ax.set_title(name, fontsize="small")
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    figure.supxlabel("epoch")
    figure.supylabel("loss")
    return _save(figure, path)


# -- the HTML report -------------------------------------------------------------------
