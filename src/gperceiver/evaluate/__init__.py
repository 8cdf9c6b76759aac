"""Cross-validation of prediction methods: new individuals or new environments.

Schemes (:data:`SCHEMES`), as in multi-environment trials (Genomes to Fields):

- ``cv1``: new individuals; each value of the ``cv`` column is validated once;
- ``cv0``: new environments; each block is validated once, training on every
  other block (no record of the held-out block is used);
- ``cv00``: new individuals in new environments; each (block, fold) pair is
  validated once, training on the other blocks' rows of the other folds.

The accuracy of every scheme is the Pearson r within each block, averaged over
blocks (:func:`pooled_table`'s ``mean``), as in the maize competitions.

The methods, by name, are in :mod:`.methods` (:data:`METHODS`); the accuracy
tables in :mod:`.accuracy`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data import Genotypes, Phenotypes
from ..io import InputError
from .accuracy import (
    ACCURACY_COLUMNS,
    POOLED,
    accuracy_table,
    format_accuracy,
    pearson,
    pooled_table,
)
from .methods import METHODS, NOTES, WEIGHT_USERS, Method, per_environment

SCHEMES = ("cv1", "cv0", "cv00")


# "fixed": the fitted fixed part of "prediction" (NaN for a method without one)
CORE_COLUMNS = ["name", "block", "cv", "response", "method", "prediction", "fixed"]


def _check(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    methods: list[str],
    scheme: str = "cv1",
    options: dict | None = None,
) -> None:
    inputs = (options or {}).get("marker_inputs")
    if inputs is not None and inputs.weights is not None:
        if not WEIGHT_USERS & set(methods):
            raise InputError(
                "--marker-weights", None,
                f"none of the methods {methods} uses marker weights",
                f"add one of {sorted(WEIGHT_USERS)} to --methods or drop the weights",
            )  # fmt: skip
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(
            "--methods",
            None,
            f"unknown method(s) {', '.join(unknown)}",
            f"use some of {', '.join(sorted(METHODS))}",
        )
    if scheme not in SCHEMES:
        raise InputError(
            "--scheme", None, f"unknown scheme {scheme!r}", f"use one of {SCHEMES}"
        )
    per_environment_methods = [
        m for m in methods if getattr(METHODS[m], "per_environment", 0)
    ]
    if scheme != "cv1" and per_environment_methods:
        raise InputError(
            "--methods",
            None,
            f"{', '.join(per_environment_methods)} fit each environment on its own "
            f"and cannot predict a held-out environment ({scheme})",
            "use gblup-main or gblup-rn",
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
    environment = table["block"].to_numpy()
    if scheme == "cv1":
        for fold in phenotypes.folds() if folds is None else folds:
            is_val = (table["cv"].astype(str) == str(fold)).to_numpy()
            seen = np.isin(environment, np.unique(environment[~is_val]))
            yield str(fold), ~is_val, is_val & seen
    elif scheme == "cv0":
        for b in phenotypes.environments:
            yield f"block {b}", environment != b, environment == b
    elif scheme == "cv00":
        cv = table["cv"].astype(str).to_numpy()
        for b in phenotypes.environments:
            for fold in phenotypes.folds() if folds is None else folds:
                is_fold = cv == str(fold)
                yield (
                    f"block {b} fold {fold}",
                    (environment != b) & ~is_fold,
                    (environment == b) & is_fold,
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
                cache["method"], cache["split"] = method, fold
                prediction = METHODS[method](train, validation, genotypes, cache)
                fixed = np.full(len(validation), np.nan)
                if isinstance(prediction, tuple):  # (fixed, genetic) parts
                    fixed, genetic = prediction
                    prediction = np.asarray(fixed) + np.asarray(genetic)
                part = validation.copy()
                part["method"] = method
                part["prediction"] = np.asarray(prediction, dtype=np.float64)
                part["fixed"] = np.asarray(fixed, dtype=np.float64)
                parts.append(part)
                bar.update()
    if not parts:
        raise ValueError("no fold has both training and validation rows in a block")
    return pd.concat(parts, ignore_index=True)[CORE_COLUMNS + extras]


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
    ``options`` seeds the methods' shared cache: ``components`` (a list, to which
    the kernel baselines append each fit's
    :func:`~gperceiver.selection.component_frame`), ``params`` / ``typed`` (neural
    hyper-parameters), ``workdir`` (where neural models are kept), ``covariates``
    (:class:`~gperceiver.data.EnvCovariates` for methods that use them),
    ``marker_inputs`` (:class:`~gperceiver.data.MarkerInputs`: the marker files
    the hyper-parameters name, read by the caller), ``device`` (where the
    Perceiver methods train and predict; default the CPU).

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
    _check(phenotypes, genotypes, methods, scheme, options)
    unknown = set(folds) - set(phenotypes.folds()) if folds else set()
    if unknown:
        raise InputError(
            "--folds",
            None,
            f"folds {sorted(unknown)} are not values of the cv column",
            f"use some of {', '.join(map(str, phenotypes.folds()))}",
        )
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
    _check(phenotypes, genotypes, [method], options=options)
    if str(fold) not in phenotypes.folds():
        raise ValueError(f"fold {fold!r} is not a value of the cv column")
    predictions = _run(phenotypes, genotypes, [method], [str(fold)], progress, options)
    return predictions, accuracy_table(predictions)


__all__ = [
    "ACCURACY_COLUMNS",
    "CORE_COLUMNS",
    "METHODS",
    "NOTES",
    "POOLED",
    "SCHEMES",
    "Method",
    "accuracy_table",
    "cross_validate",
    "format_accuracy",
    "pearson",
    "per_environment",
    "pooled_table",
    "single_split",
    "splits",
]
