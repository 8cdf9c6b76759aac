"""The records a fitted model predicts (``gperceiver predict --records``): one row
per record, ``name``, the environment and the model's fixed-effect columns (sex,
age, ...), no response needed. Each record is predicted as its genetic value in
its environment plus the fixed part of its own levels and covariates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import Genotypes
from .errors import InputError
from .tables import read_small_table


def environment_codes(values, environments: dict, source, column: str) -> np.ndarray:
    """The model's block codes ``(k,)`` of the environments ``values`` name
    (``environments`` maps each environment's name, or its code as text, to its
    code); an environment the model lacks is refused, naming the row."""
    text = pd.Series(values).astype(str).str.strip()
    codes = text.map(environments)
    unknown = codes.isna().to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise InputError(
            source,
            f"line {row + 2}, column {column!r}",
            f"environment {text.iloc[row]!r} is not one of the model's",
            f"use one of {list(environments)}",
        )
    return codes.to_numpy(np.int64)


def read_records(
    path,
    genotypes: Genotypes,
    environments: dict,
    columns=(),
    environment: str = "block",
    name: str = "name",
) -> pd.DataFrame:
    """The records of ``path`` as ``name``, ``block`` (the model's codes,
    :func:`environment_codes`) and the fixed-effect ``columns``, in the file's
    order. Without an ``environment`` column every record is in the model's one
    environment (a model of several refuses it). Refuses a missing column or a
    name without genotypes (the caller checks the columns' values against the
    model's fixed effects, :func:`gperceiver.baselines.check_fixed_columns`)."""
    table = read_small_table(path, [], "records")
    if name not in table.columns:
        raise InputError(
            path, "line 1", f"no column {name!r} (the individual, --name)",
            f"name the individual column {name!r}, or pass --name COL",
        )  # fmt: skip
    for column in columns:
        if column not in table.columns:
            raise InputError(
                path, "line 1", f"no column {column!r}, a fixed effect of the model",
                "add the column (every record's level or covariate)",
            )  # fmt: skip
    if environment in table.columns:
        blocks = environment_codes(table[environment], environments, path, environment)
    elif len(environments) == 1:
        blocks = np.full(len(table), next(iter(environments.values())), np.int64)
    else:
        raise InputError(
            path, "line 1", f"no column {environment!r} (the environment, "
            f"--environment); the model has {len(environments)}",
            "add each record's environment",
        )  # fmt: skip
    out = table.rename(columns={name: "name"}).assign(block=blocks)
    out["name"] = out["name"].str.strip()
    missing = genotypes.index_of(out["name"]) < 0
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise InputError(
            path, f"line {row + 2}, column {name!r}",
            f"{out['name'].iloc[row]!r} has no genotypes",
            "give the genotypes of every individual in the records",
        )  # fmt: skip
    return out[["name", "block", *columns]].reset_index(drop=True)


__all__ = ["environment_codes", "read_records"]
