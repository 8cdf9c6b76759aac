"""Cross-validation of prediction methods: new individuals or new environments.

Schemes (:data:`SCHEMES`), as in multi-environment trials (Genomes to Fields):

- ``cv1``: new individuals; each value of the ``cv`` column is validated once;
- ``cv0``: new environments; each block is validated once, training on every
  other block (no record of the held-out block is used);
- ``cv00``: new individuals in new environments; each (block, fold) pair is
  validated once, training on the other blocks' rows of the other folds.

The accuracy of every scheme is the Pearson r within each block, averaged over
blocks (:func:`pooled_table`'s ``mean``), as in the maize competitions.

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

from .baselines import (
    GBLUP,
    RKHS,
    Kernel,
    ReactionNorm,
    WeightedGBLUP,
    environment_kernel,
    relationship_mixes,
)
from .data import Genotypes, Phenotypes, natural_key
from .io import InputError, read_marker_weights

Method = Callable[[pd.DataFrame, pd.DataFrame, Genotypes, dict], np.ndarray]
BlockMethod = Callable[[pd.DataFrame, Genotypes, np.ndarray, dict], np.ndarray]

SCHEMES = ("cv1", "cv0", "cv00")
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


def _weighted_relationships(genotypes: Genotypes, cache: dict) -> list:
    """``(mix, Kernel)`` weighted G of all genotypes for each prior mix
    (:func:`~gperceiver.baselines.relationship_mixes`), from the ``marker_weights``
    file of the neural options, computed once per data set."""
    if "weighted_relationships" not in cache:
        options = {**cache.get("params", {}), **cache.get("typed", {})}
        if not options.get("marker_weights"):
            raise InputError(
                "--methods",
                None,
                "gblup-weighted needs a prior",
                "pass --marker-weights FILE (a TSV marker, weight)",
            )
        prior = read_marker_weights(options["marker_weights"], genotypes.markers)
        mixes = relationship_mixes(genotypes, genotypes.allele_frequencies(), prior)
        cache["weighted_relationships"] = [
            (mix, Kernel(relationship, genotypes.names)) for mix, relationship in mixes
        ]
    return cache["weighted_relationships"]


def _gblup_weighted(train, validation, genotypes, cache) -> np.ndarray:
    """:class:`~gperceiver.baselines.WeightedGBLUP`: one mix for every block of
    ``train`` (the additive path's rule), GBLUP per block under it."""
    model = WeightedGBLUP(_weighted_relationships(genotypes, cache)).fit(train)
    return model.predict(validation["name"], validation["block"])


_gblup_weighted.per_block = True  # fits each block: cannot predict a new one


def _across_environments(train, validation, genotypes, cache, interaction):
    if interaction and cache.get("covariates") is None:
        raise ValueError("gblup-rn needs environment covariates (--covariates)")
    blocks = np.union1d(
        np.union1d(train["block"].unique(), validation["block"].unique()),
        [] if not interaction else cache["covariates"].blocks,
    ).astype(np.int64)
    environment = (
        environment_kernel(cache["covariates"], blocks) if interaction else None
    )
    model = ReactionNorm(
        _relationship(genotypes, cache), environment, blocks, interaction
    )
    model.fit(train, genotypes)
    return model.predict(validation["name"], validation["block"])


def _gblup_main(train, validation, genotypes, cache) -> np.ndarray:
    return _across_environments(train, validation, genotypes, cache, False)


def _gblup_rn(train, validation, genotypes, cache) -> np.ndarray:
    return _across_environments(train, validation, genotypes, cache, True)


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

    method.per_block = True  # cannot predict a block absent from training
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
    "gblup-weighted": _gblup_weighted,
    "gblup-main": _gblup_main,
    "gblup-rn": _gblup_rn,
    "perceiver": _perceiver,
    "perceiver-pretrained": _perceiver_pretrained,
}
NOTES = {
    "gblup-weighted": "GBLUP with the --marker-weights prior, how much it counts "
    "chosen by REML on the training records, summed over blocks (the perceiver's "
    "additive path's rule)",
    "gblup-main": "main-effect GBLUP on every environment at once "
    "(environment means fixed)",
    "gblup-rn": "reaction-norm GBLUP: G, G o Omega kernels, Omega from the "
    "environment covariates (Jarquin et al. 2014)",
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


def _check(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    methods: list[str],
    scheme: str = "cv1",
) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {sorted(METHODS)}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {SCHEMES}")
    per_block_methods = [m for m in methods if getattr(METHODS[m], "per_block", 0)]
    if scheme != "cv1" and per_block_methods:
        raise ValueError(
            f"{per_block_methods} fit each block on its own and cannot predict a "
            f"held-out environment ({scheme}); use gblup-main or gblup-rn"
        )
    absent = genotypes.index_of(phenotypes.table["name"]) < 0
    if absent.any():
        raise ValueError(
            f"{int(absent.sum())} phenotype row(s) have no genotypes "
            "(drop them first, e.g. with gperceiver.io.match_phenotypes)"
        )


def splits(phenotypes: Phenotypes, scheme: str, folds: list[str] | None = None):
    """``(label, is_train, is_validation)`` boolean row masks of a scheme.

    ``folds`` restricts ``cv1`` and ``cv00`` to these ``cv`` values. In ``cv1`` a
    block absent from the training rows is left out of the validation rows.
    """
    table = phenotypes.table
    block = table["block"].to_numpy()
    if scheme == "cv1":
        for fold in phenotypes.folds() if folds is None else folds:
            is_val = (table["cv"].astype(str) == str(fold)).to_numpy()
            seen = np.isin(block, np.unique(block[~is_val]))
            yield str(fold), ~is_val, is_val & seen
    elif scheme == "cv0":
        for b in phenotypes.blocks:
            yield f"block {b}", block != b, block == b
    elif scheme == "cv00":
        cv = table["cv"].astype(str).to_numpy()
        for b in phenotypes.blocks:
            for fold in phenotypes.folds() if folds is None else folds:
                is_fold = cv == str(fold)
                yield (
                    f"block {b} fold {fold}",
                    (block != b) & ~is_fold,
                    (block == b) & is_fold,
                )
    else:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {SCHEMES}")


def _run(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    methods: list[str],
    folds: list[str] | None,
    progress: bool,
    options: dict | None = None,
    scheme: str = "cv1",
) -> pd.DataFrame:
    table = phenotypes.table
    if not phenotypes.has_cv:  # cv0 needs none: the held-out block is the fold
        table = table.assign(cv=table["block"].astype(str))
    extras = [c for c in table.columns if c not in CORE_COLUMNS]
    cache: dict = {**(options or {}), "scheme": scheme}
    parts = []
    plan = list(splits(phenotypes, scheme, folds))
    with tqdm(total=len(plan) * len(methods), desc=scheme, disable=not progress) as bar:
        for fold, is_train, is_val in plan:
            train, validation = table[is_train], table[is_val]
            if validation.empty or train.empty:
                bar.update(len(methods))
                continue
            for method in methods:
                bar.set_postfix(split=fold, method=method)
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
    scheme: str = "cv1",
    folds: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate every split of ``scheme`` once, training on its training rows
    (``folds``: only these ``cv`` values, for ``cv1`` and ``cv00``).

    ``cv1`` (default): each ``cv`` value is the validation fold once; ``cv0`` and
    ``cv00`` hold out environments (see the module docstring; without a ``cv``
    column, ``cv0`` labels each held-out block's rows with its block as ``cv``).
    ``options`` seeds the methods' shared cache: ``params`` / ``typed`` (neural
    hyper-parameters), ``workdir`` (where neural models are kept), ``covariates``
    (:class:`~gperceiver.data.EnvCovariates` for methods that use them).

    Per-block kernel methods are fitted per block (``cv1`` only), the others on
    all blocks at once; a block without training rows in a split is skipped there.

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
    scheme : str
        One of :data:`SCHEMES`.

    Returns
    -------
    predictions : DataFrame
        ``name, block, cv, response, method, prediction`` and the table's extra
        columns; one row per validation record and method.
    accuracy : DataFrame
        :func:`accuracy_table` of ``predictions``.
    """
    _check(phenotypes, genotypes, methods, scheme)
    unknown = set(folds) - set(phenotypes.folds()) if folds else set()
    if unknown:
        raise ValueError(f"folds {sorted(unknown)} are not values of the cv column")
    predictions = _run(phenotypes, genotypes, methods, folds, progress, options, scheme)
    return predictions, accuracy_table(predictions)


def single_split(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    method: str,
    fold: str,
    progress: bool = False,
    options: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One split: validate on ``cv == fold``, train on every other row.

    Returns ``(predictions, accuracy)`` as :func:`cross_validate` (``options``
    likewise), for that fold only (its ``"all"`` rows equal the fold's rows).
    """
    _check(phenotypes, genotypes, [method])
    if str(fold) not in phenotypes.folds():
        raise ValueError(f"fold {fold!r} is not a value of the cv column")
    predictions = _run(phenotypes, genotypes, [method], [str(fold)], progress, options)
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
