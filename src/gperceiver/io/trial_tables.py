"""Readers and writers of a trial's tables: phenotypes and environment covariates.

- phenotypes: ``name, response, block[, cv]`` + any extra columns (the response,
  environment and name columns can be renamed, see :func:`read_phenotypes`);
- covariates: ``block[, time]`` + one column per environment covariate — one row
  per environment (static) or per environment and time point (a daily series).

Problems raise :class:`InputError` naming the file, the line/column and the fix.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..data import EnvCovariates, Genotypes, Phenotypes, natural_key
from .errors import InputError, InputWarning
from .tables import (
    NA_TEXT,
    check_unique,
    numeric_column,
    open_lines,
    read_small_table,
    write_table,
)


def _environments(path, table: pd.DataFrame, column: str = "block"):
    """The environment ``column`` as block codes ``(rows,)`` int64 and their labels.

    Non-negative integers are the codes themselves (labels None); otherwise every
    distinct text is a label, numbered in natural order (``env2`` before
    ``env10``). A missing environment raises."""
    raw = table[column].str.strip()
    missing = raw.isin(NA_TEXT)
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise InputError(
            path,
            f"line {row + 2}, column {column!r}",
            "the environment is missing",
            "give every record an environment (a name or a non-negative integer)",
        )
    environment = pd.to_numeric(raw, errors="coerce").to_numpy()
    integral = (
        np.isfinite(environment)
        & (environment >= 0)
        & (environment == np.round(environment))
    )
    if integral.all():
        return environment.astype(np.int64), None
    labels = sorted(raw.unique().tolist(), key=natural_key)
    lookup = {label: code for code, label in enumerate(labels)}
    return raw.map(lookup).to_numpy(np.int64), labels


def _phenotype_columns(path, trait: str, environment: str, name: str) -> pd.DataFrame:
    """The table with its ``name``, trait and environment columns checked (the
    standard names must lead the header; other names may stand anywhere)."""
    if (name, trait, environment) == ("name", "response", "block"):
        return read_small_table(path, ["name", "response", "block"], "phenotypes")
    table = read_small_table(path, [], "phenotypes")
    chosen = {"--name": name, "--trait": trait, "--environment": environment}
    for option, column in chosen.items():
        if column not in table.columns:
            raise InputError(
                path,
                "line 1",
                f"no column {column!r} (given by {option})",
                f"use one of {list(table.columns)}",
            )
    standard = {"--name": "name", "--trait": "response", "--environment": "block"}
    for option, column in chosen.items():
        if column != standard[option] and standard[option] in table.columns:
            raise InputError(
                path,
                f"line 1, column {standard[option]!r}",
                f"this column would clash with {option} {column}",
                f"rename it, or pass {option} {standard[option]}",
            )
    return table


def read_phenotypes(
    path, trait: str = "response", environment: str = "block", name: str = "name"
) -> Phenotypes:
    """Read a phenotypes table; NA responses are dropped with a warning.

    ``trait``, ``environment`` and ``name`` are the columns holding the response,
    the environment (text or non-negative integers; text is numbered in natural
    order and kept as :attr:`Phenotypes.environment_labels`) and the individual; they
    are renamed ``response``, ``block`` and ``name``.
    """
    table = _phenotype_columns(path, trait, environment, name)
    response = numeric_column(
        path, table, trait, "use a number, or NA for a missing value"
    )
    environments, labels = _environments(path, table, environment)
    out = table.rename(columns={name: "name", trait: "response", environment: "block"})
    out["response"] = response
    out["block"] = environments
    na = np.isnan(response)
    if na.any():
        warnings.warn(
            f"{path}: dropped {int(na.sum())} row(s) with a missing response",
            InputWarning,
            stacklevel=2,
        )
        out = out[~na].reset_index(drop=True)
    if out.empty:
        raise InputError(
            path, None, "no row has a response", "fill the response column"
        )
    extra = [c for c in out.columns if c not in ("name", "response", "block", "cv")]
    return Phenotypes(out, str(path), extra, labels)


def read_covariates(path) -> EnvCovariates:
    """Read environment covariates ``block[, time], covariate...``.

    ``block`` holds non-negative integers (the phenotypes' block codes) or names
    (kept as :attr:`EnvCovariates.environment_labels`, numbered in natural order, to be
    matched to the phenotypes' names by :func:`align_environments`).

    With a ``time`` column (second) the rows are a series per block (e.g. days
    after planting) and every block must have the same time points; without it,
    one row per block. Every covariate value must be a number (no missing value).
    """
    fields, handle = open_lines(path)
    handle.close()
    required = ["block", "time"] if fields[1:2] == ["time"] else ["block"]
    table = read_small_table(path, required, "covariates")
    names = [c for c in table.columns if c not in required]
    if not names:
        raise InputError(
            path, "line 1", "no covariate column", "add columns after " + required[-1]
        )
    # named environments are numbered in natural order here and matched to the
    # phenotypes' names by io.align_environments
    environment, labels = _environments(path, table)
    values = np.empty((len(table), len(names)))
    for j, column in enumerate(names):
        fix = "use a number (fill missing values, e.g. by interpolation)"
        values[:, j] = numeric_column(path, table, column, fix)
        missing = np.isnan(values[:, j])
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise InputError(
                path, f"line {row + 2}, column {column!r}", "value is missing", fix
            )
    if required == ["block"]:
        check_unique(path, pd.Series(environment), "block", "block")
        order = np.argsort(environment, kind="stable")
        return EnvCovariates(
            environment[order], names, values[order, None, :], None, str(path), labels
        )
    time = numeric_column(path, table, "time", "use a number, e.g. days after planting")
    if np.isnan(time).any():
        row = int(np.flatnonzero(np.isnan(time))[0])
        raise InputError(
            path, f"line {row + 2}, column 'time'", "time is missing", "fill it"
        )
    twice = pd.DataFrame({"block": environment, "time": time}).duplicated()
    if twice.any():
        row = int(np.flatnonzero(twice.to_numpy())[0])
        raise InputError(
            path,
            f"line {row + 2}, column 'time'",
            f"block {environment[row]} has time {time[row]:g} twice",
            "keep one row per block and time",
        )
    environments = np.unique(environment)
    times = np.sort(time[environment == environments[0]])
    out = np.empty((len(environments), len(times), len(names)))
    for e, b in enumerate(environments):
        rows = np.flatnonzero(environment == b)
        own = time[rows]
        absent = np.setdiff1d(times, own)
        extra = np.setdiff1d(own, times)
        if len(absent) or len(extra):
            t = absent[0] if len(absent) else extra[0]
            row = rows[0] if len(absent) else rows[np.flatnonzero(own == t)[0]]
            raise InputError(
                path,
                f"line {row + 2}, column 'time'",
                f"block {b} {'lacks' if len(absent) else 'has extra'} time {t:g} "
                f"(block {environments[0]} has {len(times)} time points)",
                "give every block the same time points",
            )
        out[e] = values[rows[np.argsort(own)]]
    return EnvCovariates(environments, names, out, times, str(path), labels)


def match_phenotypes(phenotypes: Phenotypes, genotypes: Genotypes) -> Phenotypes:
    """Keep rows whose name has genotypes; warn with a count, raise if none match."""
    known = genotypes.index_of(phenotypes.table["name"]) >= 0
    if not known.any():
        raise InputError(
            phenotypes.source,
            "column 'name'",
            "no phenotype name matches an individual of the markers file",
            "use the same individual names in both files",
        )
    if not known.all():
        n_names = phenotypes.table.loc[~known, "name"].nunique()
        warnings.warn(
            f"{phenotypes.source}: {n_names} name(s) ({int((~known).sum())} rows) "
            "have no genotypes and are ignored",
            InputWarning,
            stacklevel=2,
        )
    table = phenotypes.table[known].reset_index(drop=True)
    return Phenotypes(
        table,
        phenotypes.source,
        phenotypes.extra_columns,
        phenotypes.environment_labels,
    )


def write_phenotypes(phenotypes: Phenotypes, path) -> None:
    write_table(phenotypes.table, path)


def write_covariates(covariates: EnvCovariates, path) -> None:
    """Write ``block[, time], covariates...`` (readable by :func:`read_covariates`)."""
    e, t, _ = covariates.values.shape
    frame = pd.DataFrame(covariates.values.reshape(e * t, -1), columns=covariates.names)
    if covariates.is_series:
        frame.insert(0, "time", np.tile(covariates.times, e))
    environments = covariates.environments
    if covariates.environment_labels is not None:
        environments = np.asarray(covariates.environment_labels, dtype=object)
    frame.insert(0, "block", np.repeat(environments, t))
    write_table(frame, path, float_format="%.6g")
