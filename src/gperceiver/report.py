"""Figures of cross-validation results, written as PNG files.

Figures are drawn with matplotlib's Agg canvas (no display, no global pyplot
state) and written atomically: to a temporary file beside the target, then renamed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .evaluate import POOLED, pearson, pooled_table
from .io import atomic_path

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
    blocks = np.sort(predictions["block"].unique())
    methods = list(dict.fromkeys(predictions["method"]))
    figure = Figure(figsize=(3.6 * len(blocks), 3.6), layout="constrained")
    axes = figure.subplots(1, len(blocks), squeeze=False, sharey=False)[0]
    for ax, block in zip(axes, blocks, strict=True):
        in_block = predictions[predictions["block"] == block]
        for i, method in enumerate(methods):
            rows = in_block[in_block["method"] == method]
            r = pearson(rows["prediction"], rows["response"])
            ax.scatter(
                rows["prediction"],
                rows["response"],
                s=8,
                alpha=0.5,
                color=_colour(i),
                label=f"{method} (r = {r:.3f})",
            )
        ax.set_title(f"block {block}")
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
