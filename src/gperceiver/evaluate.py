"""Cross-validation of prediction methods over the folds of the ``cv`` column.

A method is a callable ``(train, validation, genotypes, cache) -> (k,)``
predictions for the ``k`` rows of ``validation``, registered by name in
:data:`METHODS`. It is called once per fold with every block's training rows;
kernel baselines fit each block separately (:func:`per_block`), neural methods fit
all blocks at once. ``cache`` is a dict shared by every call on one data set, where
a method keeps what does not depend on the split (a relationship matrix, its
decompositions, a pretrained encoder).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .baselines import GBLUP, RKHS, Kernel
from .data import Genotypes, Phenotypes, natural_key

Method = Callable[[pd.DataFrame, pd.DataFrame, Genotypes, dict], np.ndarray]
BlockMethod = Callable[[pd.DataFrame, Genotypes, np.ndarray, dict], np.ndarray]

CORE_COLUMNS = ["name", "block", "cv", "response", "method", "prediction"]
ACCURACY_COLUMNS = ["method", "block", "fold", "pearson_r", "n"]
POOLED = "all"  # fold label of the accuracy rows pooling every fold


def _relationship(genotypes: Genotypes, cache: dict) -> Kernel:
    """VanRaden G of all genotypes, computed once per data set."""
    if "relationship" not in cache:
        cache["relationship"] = Kernel.relationship(genotypes)
    return cache["relationship"]


def _gblup(train, genotypes, names, cache) -> np.ndarray:
    model = GBLUP(relationship=_relationship(genotypes, cache))
    return model.fit(train, genotypes).predict(names)


def _rkhs(train, genotypes, names, cache) -> np.ndarray:
    model = RKHS(relationship=_relationship(genotypes, cache))
    return model.fit(train, genotypes).predict(names)


def per_block(fit_predict: BlockMethod) -> Method:
    """A method fitted on each block's training rows, predicting its validation rows."""

    def method(train, validation, genotypes, cache) -> np.ndarray:
        out = np.full(len(validation), np.nan)
        for block in np.unique(validation["block"]):
            train_block = train[train["block"] == block]
            in_block = (validation["block"] == block).to_numpy()
            if len(train_block):
                names = validation.loc[in_block, "name"].to_numpy()
                out[in_block] = fit_predict(train_block, genotypes, names, cache)
        return out

    return method


def _perceiver(train, validation, genotypes, cache) -> np.ndarray:
    from .finetuning import perceiver_method

    return perceiver_method(train, validation, genotypes, cache)


def _perceiver_pretrained(train, validation, genotypes, cache) -> np.ndarray:
    from .finetuning import perceiver_pretrained_method

    return perceiver_pretrained_method(train, validation, genotypes, cache)


METHODS: dict[str, Method] = {
    "gblup": per_block(_gblup),
    "rkhs": per_block(_rkhs),
    "perceiver": _perceiver,
    "perceiver-pretrained": _perceiver_pretrained,
}
NOTES = {
    "perceiver-pretrained": "pretrained once on the genotypes of every individual "
    "(no phenotypes), then finetuned on the training folds of each split",
}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN with fewer than two points or a constant input."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    scale = np.sqrt((xc**2).sum() * (yc**2).sum())
    return float((xc * yc).sum() / scale) if scale > 0 else float("nan")


def _check(phenotypes: Phenotypes, genotypes: Genotypes, methods: list[str]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {sorted(METHODS)}")
    absent = genotypes.index_of(phenotypes.table["name"]) < 0
    if absent.any():
        raise ValueError(
            f"{int(absent.sum())} phenotype row(s) have no genotypes "
            "(drop them first, e.g. with gperceiver.io.match_phenotypes)"
        )


def _run(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    methods: list[str],
    folds: list[str],
    progress: bool,
    options: dict | None = None,
) -> pd.DataFrame:
    table = phenotypes.table
    extras = [c for c in table.columns if c not in CORE_COLUMNS]
    cache: dict = dict(options or {})
    parts = []
    with tqdm(
        total=len(folds) * len(methods), desc="cross-validation", disable=not progress
    ) as bar:
        for fold in folds:
            train, validation = phenotypes.split(fold)
            # blocks absent from training cannot be predicted by per-block methods
            validation = validation[validation["block"].isin(train["block"].unique())]
            if validation.empty or train.empty:
                bar.update(len(methods))
                continue
            for method in methods:
                bar.set_postfix(fold=fold, method=method)
                prediction = METHODS[method](train, validation, genotypes, cache)
                part = validation.copy()
                part["method"] = method
                part["prediction"] = np.asarray(prediction, dtype=np.float64)
                parts.append(part)
                bar.update()
    if not parts:
        raise ValueError("no fold has both training and validation rows in a block")
    return pd.concat(parts, ignore_index=True)[CORE_COLUMNS + extras]


def accuracy_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Pearson r of prediction vs response per method, block and fold.

    Adds, per method and block, a row with ``fold = "all"`` whose r pools the
    predictions of every fold.

    Parameters
    ----------
    predictions : DataFrame
        Columns ``method``, ``block``, ``cv``, ``response``, ``prediction``.

    Returns
    -------
    DataFrame
        Columns ``method, block, fold, pearson_r, n``; ``fold`` is a string.

    Examples
    --------
    >>> p = pd.DataFrame({"method": "m", "block": 0, "cv": ["0", "0", "1", "1"],
    ...                   "response": [1.0, 2.0, 3.0, 5.0],
    ...                   "prediction": [1.0, 3.0, 2.0, 4.0]})
    >>> print(accuracy_table(p).round(3).to_string(index=False))
    method  block fold  pearson_r  n
         m      0    0      1.000  2
         m      0    1      1.000  2
         m      0  all      0.832  4
    """
    rows = []
    folds = predictions["cv"].astype(str)
    for method in dict.fromkeys(predictions["method"]):
        of_method = predictions["method"] == method
        for block in np.sort(predictions.loc[of_method, "block"].unique()):
            group = of_method & (predictions["block"] == block)
            labels = sorted(folds[group].unique(), key=natural_key)
            selections = [(f, group & (folds == f)) for f in labels]
            for fold, selected in [*selections, (POOLED, group)]:
                part = predictions[selected]
                r = pearson(part["prediction"], part["response"])
                rows.append((method, int(block), fold, r, len(part)))
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)


def cross_validate(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    methods: list[str],
    progress: bool = True,
    options: dict | None = None,
    folds: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each ``cv`` value (or each of ``folds``) is the validation fold once; train
    on all other rows.

    ``options`` seeds the methods' shared cache: ``params`` / ``typed`` (neural
    hyper-parameters), ``workdir`` (where neural models are kept).

    Kernel methods are fitted per block, neural methods on all blocks at once; a
    block without training rows in a split is skipped there.

    Parameters
    ----------
    phenotypes : Phenotypes
        With a ``cv`` column; every name must have genotypes.
    genotypes : Genotypes
        All individuals (kernels use them all, without responses).
    methods : list of str
        Names in :data:`METHODS`.
    progress : bool
        Show a progress bar.

    Returns
    -------
    predictions : DataFrame
        ``name, block, cv, response, method, prediction`` and the table's extra
        columns; one row per validation record and method.
    accuracy : DataFrame
        :func:`accuracy_table` of ``predictions``.
    """
    _check(phenotypes, genotypes, methods)
    unknown = set(folds or []) - set(phenotypes.folds())
    if unknown:
        raise ValueError(f"folds {sorted(unknown)} are not values of the cv column")
    predictions = _run(
        phenotypes, genotypes, methods, folds or phenotypes.folds(), progress, options
    )
    return predictions, accuracy_table(predictions)


def single_split(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    method: str,
    fold: str,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One split: validate on ``cv == fold``, train on every other row.

    Returns ``(predictions, accuracy)`` as :func:`cross_validate`, for that fold
    only (its ``"all"`` rows equal the fold's rows).
    """
    _check(phenotypes, genotypes, [method])
    if str(fold) not in phenotypes.folds():
        raise ValueError(f"fold {fold!r} is not a value of the cv column")
    predictions = _run(phenotypes, genotypes, [method], [str(fold)], progress)
    return predictions, accuracy_table(predictions)


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
