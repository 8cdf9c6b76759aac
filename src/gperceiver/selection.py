"""Selection candidates: fit a kernel baseline on every phenotyped record and
predict every genotyped individual (phenotyped or not) with the precision of
each prediction, and what the fit estimated.

Shape letters: N genotyped individuals, n records of a block.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .baselines import (
    GBLUP,
    NO_FIXED,
    RKHS,
    FixedEffects,
    Kernel,
    MixedModelFit,
    WeightedGBLUP,
    blup_allele_effects,
    fixed_effect_covariance,
    marker_effect_frame,
    mixed_weights,
    weighted_kernels,
)
from .data import Genotypes, Phenotypes
from .io import InputError

CANDIDATE_METHODS = ("gblup", "rkhs", "gblup-weighted")
CANDIDATE_COLUMNS = [
    "name", "block", "records", "prediction", "gebv", "pev", "reliability",
]  # fmt: skip
COMPONENT_COLUMNS = ["method", "block", "fold", "component", "value", "se"]


def component_frame(
    fit: MixedModelFit, effect_names, se=None, extra=(), **labels
) -> pd.DataFrame:
    """What a REML fit estimated, one row per component: ``s2g``, ``s2e``,
    ``h2`` (on the kernel's scale), the ``extra`` ``(name, value)`` pairs (an RKHS
    bandwidth), then each fixed effect of ``effect_names`` (``intercept``,
    ``sex=M``, ..., :attr:`FixedDesign.names_`) with its standard error ``se``
    ``(p,)`` (NaN if None); ``labels`` (method, block, fold) fill their columns."""
    rows = [("s2g", fit.s2g), ("s2e", fit.s2e), ("h2", fit.h2), *extra]
    frame = pd.DataFrame(rows, columns=["component", "value"]).assign(se=np.nan)
    effects = pd.DataFrame(
        {
            "component": list(effect_names),
            "value": fit.beta,
            "se": np.full(len(fit.beta), np.nan) if se is None else se,
        }
    )
    labels = {"method": None, "block": None, "fold": None, **labels}
    frame = pd.concat([frame, effects], ignore_index=True).assign(**labels)
    return frame[COMPONENT_COLUMNS]


def variance_components(
    model: GBLUP, method: str, environment, fold: str, with_se: bool = False
) -> pd.DataFrame:
    """:func:`component_frame` of a fitted :class:`~gperceiver.baselines.GBLUP`
    or RKHS; standard errors of the fixed effects when ``with_se`` (one Cholesky
    factorisation of the records' covariance)."""
    fit, se = model.fit_, None
    if with_se:
        covariance = fixed_effect_covariance(
            fit, model.kernel_, model.individuals_, model.covariates_
        )
        se = np.sqrt(np.maximum(np.diag(covariance), 0.0))
    extra = [("bandwidth", model.bandwidth_)] if hasattr(model, "bandwidth_") else []
    return component_frame(
        fit,
        model.design_.names_,
        se,
        extra,
        method=method,
        block=environment,
        fold=fold,
    )


def marker_effects(
    fit: MixedModelFit, names, genotypes: Genotypes, marker_weights=None, **labels
) -> pd.DataFrame:
    """rrBLUP allele effects of a GBLUP ``fit`` to records of individuals
    ``names`` ``(n,)`` (in the fit's record order) on VanRaden's G of
    ``genotypes`` (their own allele frequencies; ``marker_weights`` ``(M,)`` of a
    weighted one), as :func:`~gperceiver.baselines.marker_effect_frame`:
    ``gebv = sum(effect * (dosage - ploidy * frequency))`` over a genotype's
    allele columns; ``labels`` (method, block, fold) fill their columns."""
    frequencies = genotypes.allele_frequencies()
    effects = blup_allele_effects(
        genotypes, genotypes.index_of(names), fit.weights, frequencies, marker_weights
    )
    return marker_effect_frame(
        genotypes.markers, effects, frequencies, genotypes.ploidy, **labels
    )


def _environment_model(method, relationship, fixed, weighted, records) -> GBLUP:
    if method == "rkhs":
        return RKHS(relationship, fixed=fixed).fit(records, None)
    if method == "gblup-weighted":  # the mix chosen on every block at once
        relationship = weighted
    return GBLUP(relationship, fixed=fixed).fit(records, None)


def _candidate_rows(model, records, genotypes, environment) -> pd.DataFrame:
    """One environment's :data:`CANDIDATE_COLUMNS` rows from its fitted ``model``."""
    fixed_part, gebv = model.predict_parts(genotypes.names)
    rows = model.kernel_.index_of(genotypes.names)
    counts = records["name"].value_counts()
    return pd.DataFrame(
        {
            "name": genotypes.names,
            "block": environment,
            "records": counts.reindex(genotypes.names, fill_value=0).values,
            "prediction": fixed_part + gebv,
            "gebv": gebv,
            "pev": model.prediction_error_variance()[rows],
            "reliability": model.reliability()[rows],
        }
    )


def _weighted_choice(genotypes, table, fixed, weighted, prior):
    """``gblup-weighted``: the relationship REML chooses for every environment
    and, given the ``prior``, the per-marker weights of that mix."""
    if not weighted and prior is None:
        raise InputError(
            "--method", None, "gblup-weighted needs a prior",
            "pass --marker-weights FILE (a TSV marker, weight)",
        )  # fmt: skip
    weighted = weighted or weighted_kernels(genotypes, prior)
    selection = WeightedGBLUP(weighted, fixed=fixed).fit(table)
    if prior is None:
        return selection.relationship_, None
    return selection.relationship_, mixed_weights(prior, selection.mix_)


def predict_candidates(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    method: str = "gblup",
    fixed: FixedEffects = NO_FIXED,
    relationship: Kernel | None = None,
    weighted: list | None = None,
    effects: list | None = None,
    prior: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit ``method`` per block on every record, predict every genotyped
    individual in every block.

    Parameters
    ----------
    phenotypes : Phenotypes
        The records to fit on (every name genotyped).
    genotypes : Genotypes
        The individuals to predict: phenotyped or not (selection candidates).
    method : str
        One of :data:`CANDIDATE_METHODS`.
    fixed : FixedEffects
        Fixed effects fitted beside the intercept.
    relationship : Kernel, optional
        VanRaden's G of ``genotypes`` (computed if absent).
    weighted : list of (float, Kernel), optional
        The candidate relationships of ``gblup-weighted``
        (:func:`~gperceiver.baselines.relationship_mixes`; made from ``prior``
        when absent); REML chooses one mix for every block
        (:class:`~gperceiver.baselines.WeightedGBLUP`).
    effects : list, optional
        Receives each block's :func:`marker_effects` (``gblup``, and
        ``gblup-weighted`` given its marker-weight ``prior`` ``(M,)``; ``rkhs``
        has none); ``relationship`` must then be VanRaden's G of ``genotypes``.

    Returns
    -------
    candidates : DataFrame
        :data:`CANDIDATE_COLUMNS`, one row per individual and block: ``records``
        (of the individual in the block), ``gebv`` (the BLUP of its genetic
        value), ``prediction`` (``gebv`` plus the fixed part at the mean of the
        training levels and covariates), ``pev`` (prediction error variance of
        ``gebv``) and ``reliability`` (``1 - pev / (s2g K_ii)``).
    components : DataFrame
        :func:`variance_components` of every block (``fold`` = ``"all"``), with
        standard errors of the fixed effects.
    """
    if method not in CANDIDATE_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {CANDIDATE_METHODS}")
    relationship = relationship or Kernel.relationship(genotypes)
    table = phenotypes.table
    chosen, marker_weights = None, None
    if method == "gblup-weighted":
        chosen, marker_weights = _weighted_choice(
            genotypes, table, fixed, weighted, prior
        )
    with_effects = effects is not None and method != "rkhs"
    if with_effects and method == "gblup-weighted" and prior is None:
        raise ValueError("marker effects of gblup-weighted need its prior")
    parts, components = [], []
    for environment in np.sort(table["block"].unique()):
        records = table[table["block"] == environment]
        model = _environment_model(method, relationship, fixed, chosen, records)
        parts.append(_candidate_rows(model, records, genotypes, environment))
        components.append(variance_components(model, method, environment, "all", True))
        if with_effects:
            labels = {"method": method, "block": environment, "fold": "all"}
            effects.append(
                marker_effects(
                    model.fit_, records["name"], genotypes, marker_weights, **labels
                )
            )
    return (
        pd.concat(parts, ignore_index=True)[CANDIDATE_COLUMNS],
        pd.concat(components, ignore_index=True),
    )
