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


def _blocks(path, table: pd.DataFrame, column: str = "block"):
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
    block = pd.to_numeric(raw, errors="coerce").to_numpy()
    integral = np.isfinite(block) & (block >= 0) & (block == np.round(block))
    if integral.all():
        return block.astype(np.int64), None
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
    order and kept as :attr:`Phenotypes.block_labels`) and the individual; they
    are renamed ``response``, ``block`` and ``name``.
    """
    table = _phenotype_columns(path, trait, environment, name)
    response = numeric_column(
        path, table, trait, "use a number, or NA for a missing value"
    )
    blocks, labels = _blocks(path, table, environment)
    out = table.rename(columns={name: "name", trait: "response", environment: "block"})
    out["response"] = response
    out["block"] = blocks
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
    block, labels = _blocks(path, table)
    if labels is not None:  # covariates number environments as the models do
        row = int(np.flatnonzero(~table["block"].str.strip().str.isdigit())[0])
        raise InputError(
            path,
            f"line {row + 2}, column 'block'",
            f"{table['block'].iloc[row].strip()!r} is not a non-negative integer",
            "number the environments 0, 1, 2, ... as in the phenotypes",
        )
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
        check_unique(path, pd.Series(block), "block", "block")
        order = np.argsort(block, kind="stable")
        return EnvCovariates(
            block[order], names, values[order, None, :], None, str(path)
        )
    time = numeric_column(path, table, "time", "use a number, e.g. days after planting")
    if np.isnan(time).any():
        row = int(np.flatnonzero(np.isnan(time))[0])
        raise InputError(
            path, f"line {row + 2}, column 'time'", "time is missing", "fill it"
        )
    twice = pd.DataFrame({"block": block, "time": time}).duplicated()
    if twice.any():
        row = int(np.flatnonzero(twice.to_numpy())[0])
        raise InputError(
            path,
            f"line {row + 2}, column 'time'",
            f"block {block[row]} has time {time[row]:g} twice",
            "keep one row per block and time",
        )
    blocks = np.unique(block)
    times = np.sort(time[block == blocks[0]])
    out = np.empty((len(blocks), len(times), len(names)))
    for e, b in enumerate(blocks):
        rows = np.flatnonzero(block == b)
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
                f"(block {blocks[0]} has {len(times)} time points)",
                "give every block the same time points",
            )
        out[e] = values[rows[np.argsort(own)]]
    return EnvCovariates(blocks, names, out, times, str(path))


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
        table, phenotypes.source, phenotypes.extra_columns, phenotypes.block_labels
    )


def write_phenotypes(phenotypes: Phenotypes, path) -> None:
    write_table(phenotypes.table, path)


def write_covariates(covariates: EnvCovariates, path) -> None:
    """Write ``block[, time], covariates...`` (readable by :func:`read_covariates`)."""
    e, t, _ = covariates.values.shape
    frame = pd.DataFrame(covariates.values.reshape(e * t, -1), columns=covariates.names)
    if covariates.is_series:
        frame.insert(0, "time", np.tile(covariates.times, e))
    frame.insert(0, "block", np.repeat(covariates.blocks, t))
    write_table(frame, path, float_format="%.6g")
