"""Accuracy of cross-validated predictions: Pearson r per method, block and fold,
and the pooled ``method x block`` table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import natural_key

# pearson_r_genetic: r of the genetic part (prediction - fixed) with the response
# corrected for the fitted fixed effects (response - fixed); NaN without them
ACCURACY_COLUMNS = ["method", "block", "fold", "pearson_r", "pearson_r_genetic", "n"]


POOLED = "all"  # fold label of the accuracy rows pooling every fold


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN with fewer than two points or a constant input."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    scale = np.sqrt((xc**2).sum() * (yc**2).sum())
    return float((xc * yc).sum() / scale) if scale > 0 else float("nan")


def accuracy_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Pearson r of prediction vs response per method, block and fold.

    Adds, per method and block, a row with ``fold = "all"`` whose r pools the
    predictions of every fold.

    Parameters
    ----------
    predictions : DataFrame
        Columns ``method``, ``block``, ``cv``, ``response``, ``prediction`` and
        optionally ``fixed`` (the fitted fixed part of each prediction).

    Returns
    -------
    DataFrame
        Columns ``method, block, fold, pearson_r, pearson_r_genetic, n``;
        ``fold`` is a string; ``pearson_r_genetic`` is the r of ``prediction -
        fixed`` with ``response - fixed`` (NaN where ``fixed`` is).

    Examples
    --------
    >>> p = pd.DataFrame({"method": "m", "block": 0, "cv": ["0", "0", "1", "1"],
    ...                   "response": [1.0, 2.0, 3.0, 5.0],
    ...                   "prediction": [1.0, 3.0, 2.0, 4.0],
    ...                   "fixed": [0.5, 1.0, 1.0, 2.0]})
    >>> print(accuracy_table(p).round(3).to_string(index=False))
    method  block fold  pearson_r  pearson_r_genetic  n
         m      0    0      1.000              1.000  2
         m      0    1      1.000              1.000  2
         m      0  all      0.832              0.526  4
    """
    rows = []
    folds = predictions["cv"].astype(str)
    for method in dict.fromkeys(predictions["method"]):
        of_method = predictions["method"] == method
        for environment in np.sort(predictions.loc[of_method, "block"].unique()):
            group = of_method & (predictions["block"] == environment)
            labels = sorted(folds[group].unique(), key=natural_key)
            selections = [(f, group & (folds == f)) for f in labels]
            for fold, selected in [*selections, (POOLED, group)]:
                part = predictions[selected]
                r = pearson(part["prediction"], part["response"])
                rows.append(
                    (method, int(environment), fold, r, _genetic_r(part), len(part))
                )
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)


def _genetic_r(part: pd.DataFrame) -> float:
    """r of the genetic part with the response corrected for fixed effects."""
    if "fixed" not in part or part["fixed"].isna().any():
        return float("nan")
    fixed = part["fixed"].to_numpy(np.float64)
    return pearson(part["prediction"] - fixed, part["response"] - fixed)


def pooled_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Pooled r as a ``method x block`` table with a ``mean`` column over blocks."""
    pooled = accuracy[accuracy["fold"] == POOLED]
    order = list(dict.fromkeys(pooled["method"]))
    table = pooled.pivot(index="method", columns="block", values="pearson_r")
    table = table.reindex(order)
    table.columns = [f"block {b}" for b in table.columns]
    table["mean"] = table.mean(axis=1)
    return table


def format_accuracy(accuracy: pd.DataFrame, digits: int = 3) -> str:
    """:func:`pooled_table` as aligned text, one line per method."""
    return pooled_table(accuracy).to_string(float_format=lambda r: f"{r:.{digits}f}")
