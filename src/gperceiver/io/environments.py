"""Environments by name across inputs: environment covariates keyed by the names
the phenotypes (or a finetuned model) gave the environments, recoded to their
block codes.

Shape letters: E environments with covariates, T times, C covariates.
"""

from __future__ import annotations

import numpy as np

from ..data import EnvCovariates
from .errors import InputError


def align_environments(
    covariates: EnvCovariates, labels: list[str] | None, where: str
) -> tuple[EnvCovariates, list[str] | None]:
    """``covariates`` recoded to the block codes of ``labels`` (the names of the
    blocks ``0..len(labels)-1`` in ``where``: a phenotypes table or a model),
    and the labels extended by the environments only the covariates name (new
    environments to predict, numbered after the others in the file's order).

    With ``labels`` None (``where`` numbers its blocks) the covariates must
    number theirs too and come back unchanged. With labels, the covariates must
    name theirs; a file of whole numbers is read as names (``2019``), since a
    named table's internal codes are not the user's to know.

    Raises
    ------
    InputError
        Named covariates for numbered blocks, or no name in common.
    """
    if labels is None:
        if covariates.environment_labels is not None:
            raise InputError(
                covariates.source,
                "column 'block'",
                "environments are named here "
                f"({covariates.environment_labels[0]!r}, ...) but numbered in {where}",
                "use the same environment column in both files",
            )
        return covariates, None
    names = covariates.environment_labels
    if names is None:
        names = [str(int(b)) for b in covariates.environments]
    if not set(names) & set(labels):
        raise InputError(
            covariates.source,
            "column 'block'",
            f"no environment is named as in {where} ({names[0]!r} here, "
            f"{labels[0]!r} there)",
            "name the environments as in the phenotypes' environment column",
        )
    extended = list(labels) + [n for n in names if n not in labels]
    lookup = {name: code for code, name in enumerate(extended)}
    codes = np.array([lookup[n] for n in names], dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    aligned = EnvCovariates(
        codes[order],
        covariates.names,
        covariates.values[order],
        covariates.times,
        covariates.source,
        [names[i] for i in order],
    )
    return aligned, extended
