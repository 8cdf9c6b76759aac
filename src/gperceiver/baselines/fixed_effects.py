"""Fixed effects of a mixed model: the design matrix ``X`` built from columns of
the phenotype records (factors such as sex, litter or replicate, and linear
covariates such as age), learnt on training records only.

Shape letters: n records, p columns of ``X``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io import InputError, InputWarning


@dataclass(frozen=True)
class FixedEffects:
    """Which record columns are fixed effects.

    ``factors`` are fitted as one effect per level (text or numbers, compared as
    text), ``covariates`` as one slope each; an intercept is always fitted.
    """

    factors: tuple[str, ...] = ()
    covariates: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.factors, *self.covariates)

    def __bool__(self) -> bool:
        return bool(self.columns)


NO_FIXED = FixedEffects()


def column_list(value) -> tuple[str, ...]:
    """Column names from comma-separated text or a list (None: none).

    >>> column_list("sex, litter"), column_list(["age"]), column_list(None)
    (('sex', 'litter'), ('age',), ())
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())


def check_fixed_columns(table: pd.DataFrame, spec: FixedEffects, source) -> None:
    """Refuse (:class:`InputError`) a fixed-effect column missing from the
    phenotypes ``table`` (read from ``source``), a covariate that is not a finite
    number, or an empty factor value."""
    usable = [c for c in table.columns if c not in ("name", "response")]
    for column in spec.columns:
        if column not in usable:
            option = "--fixed" if column in spec.factors else "--fixed-numeric"
            raise InputError(
                option,
                f"column {column!r}",
                f"is not a fixed-effect column of {source}",
                f"use one of {usable}",
            )
    for column in spec.factors:
        empty = table[column].astype(str).str.strip().isin(["", "NA", "na", "nan"])
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise InputError(
                source,
                f"line {row + 2}, column {column!r}",
                "a fixed-effect factor is missing",
                "give every record a level (or drop the record)",
            )
    for column in spec.covariates:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                source,
                f"line {row + 2}, column {column!r}",
                f"{table[column].iloc[row]!r} is not a number",
                "give every record a numeric covariate (or drop the record)",
            )


class FixedDesign:
    """The design ``X`` of an intercept, treatment-coded factors and covariates.

    :meth:`fit` learns, from training records only, each factor's levels (the
    first in sorted order is the reference, absorbed by the intercept) and each
    covariate's mean (covariates are centred on it, so the intercept is the mean
    response of a reference record at the mean covariate). :meth:`matrix` writes
    ``X`` for any records: a level the training records never showed gets the mean
    effect of the training levels (``1 / L`` in each of the factor's ``L - 1``
    columns, the reference's effect being 0), with an :class:`InputWarning` that
    counts such records.

    Examples
    --------
    >>> train = pd.DataFrame({"sex": ["F", "M", "M"], "age": [1.0, 2.0, 3.0]})
    >>> design = FixedDesign(FixedEffects(("sex",), ("age",))).fit(train)
    >>> design.names_
    ['intercept', 'sex=M', 'age']
    >>> design.matrix(train)
    array([[ 1.,  0., -1.],
           [ 1.,  1.,  0.],
           [ 1.,  1.,  1.]])
    """

    def __init__(self, spec: FixedEffects = NO_FIXED):
        self.spec = spec

    def fit(self, records: pd.DataFrame) -> FixedDesign:
        """Learn levels and covariate means from ``records``; returns ``self``."""
        self.levels_ = {
            column: sorted(set(_factor_text(records, column)))
            for column in self.spec.factors
        }
        self.means_ = {
            column: float(_covariate(records, column).mean())
            for column in self.spec.covariates
        }
        self.names_ = ["intercept"]
        for column, levels in self.levels_.items():
            self.names_ += [f"{column}={level}" for level in levels[1:]]
        self.names_ += list(self.spec.covariates)
        return self

    def to_dict(self) -> dict:
        """What :meth:`fit` learnt, as JSON values (:meth:`from_dict` reads it).

        >>> train = pd.DataFrame({"sex": ["F", "M"], "age": [1.0, 3.0]})
        >>> design = FixedDesign(FixedEffects(("sex",), ("age",))).fit(train)
        >>> again = FixedDesign.from_dict(design.to_dict())
        >>> (again.matrix(train) == design.matrix(train)).all(), again.names_
        (np.True_, ['intercept', 'sex=M', 'age'])
        """
        return {
            "factors": list(self.spec.factors),
            "covariates": list(self.spec.covariates),
            "levels": {column: list(v) for column, v in self.levels_.items()},
            "means": dict(self.means_),
            "names": list(self.names_),
        }

    @classmethod
    def from_dict(cls, values: dict) -> FixedDesign:
        """A fitted design from :meth:`to_dict`'s values."""
        spec = FixedEffects(tuple(values["factors"]), tuple(values["covariates"]))
        design = cls(spec)
        # in the order of the spec, as X's columns: JSON may sort the keys
        levels, means = values["levels"], values["means"]
        design.levels_ = {column: list(levels[column]) for column in spec.factors}
        design.means_ = {column: float(means[column]) for column in spec.covariates}
        design.names_ = list(values["names"])
        return design

    def mean_row(self) -> np.ndarray:
        """The ``(p,)`` row of a record at the mean of every factor's training
        levels and at the mean covariates (a selection candidate without
        records)."""
        row = [1.0]
        for levels in self.levels_.values():
            row += [1.0 / len(levels)] * (len(levels) - 1)
        row += [0.0] * len(self.means_)
        return np.array(row)

    def matrix(self, records: pd.DataFrame, warn: bool = True) -> np.ndarray:
        """``X`` ``(n, p)`` float64 for ``records`` (columns :attr:`names_`)."""
        parts = [np.ones((len(records), 1))]
        for column, levels in self.levels_.items():
            text = _factor_text(records, column)
            dummies = np.zeros((len(records), len(levels) - 1))
            lookup = {level: j - 1 for j, level in enumerate(levels)}
            position = np.array([lookup.get(t, -2) for t in text], dtype=np.int64)
            unseen = position == -2
            rows = np.flatnonzero(position >= 0)
            dummies[rows, position[rows]] = 1.0
            dummies[unseen] = 1.0 / len(levels)
            if warn and unseen.any():
                warnings.warn(
                    f"fixed effect {column!r}: {int(unseen.sum())} record(s) have a "
                    "level without training records and get the mean level effect",
                    InputWarning,
                    stacklevel=2,
                )
            parts.append(dummies)
        for column, mean in self.means_.items():
            parts.append((_covariate(records, column) - mean)[:, None])
        return np.concatenate(parts, axis=1)


def _factor_text(records: pd.DataFrame, column: str) -> list[str]:
    if column not in records.columns:
        raise KeyError(f"records lack the fixed-effect column {column!r}")
    return records[column].astype(str).str.strip().tolist()


def _covariate(records: pd.DataFrame, column: str) -> np.ndarray:
    if column not in records.columns:
        raise KeyError(f"records lack the fixed-effect column {column!r}")
    values = pd.to_numeric(records[column], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            f"covariate {column!r} must be a finite number in every record"
        )
    return values
