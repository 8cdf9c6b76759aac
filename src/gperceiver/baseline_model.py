"""A fitted kernel baseline that predicts genotypes it never saw, in memory and on
disk: ``gperceiver fit`` writes one, ``gperceiver predict`` (and
:class:`gperceiver.GBLUP`) reads it.

Each environment (block) is fitted on its records by the estimators of
:mod:`gperceiver.baselines`, with the relationship of *all* genotypes given (as
``evaluate`` and ``gblup`` do; no response enters it). The solution is then written
in a form that needs only the genotypes of a new individual:

- GBLUP (and ``gblup-weighted``): allele effects ``(M, A)`` per environment
  (:func:`~gperceiver.baselines.blup_allele_effects`), the BLUP of a genotype being
  ``sum (dosage - P p) effects`` with the frequencies ``p`` of the fit;
- ``gblup-main`` (main-effect GBLUP across environments, as ``evaluate``'s): one
  GBLUP on every record with the environment a fixed factor, so one set of allele
  effects; each environment keeps it with its own mean (the intercept plus its
  level's effect);
- ``gblup-rn`` (the reaction norm, as ``evaluate``'s, Jarquín et al. 2014): the
  main and interaction BLUPs of the records' solution, summed per environment of
  the environment kernel into allele effects ``(M, A)`` each, so that every
  environment with covariates gets its own, new ones included;
- RKHS: the scaled centred dosages of the phenotyped individuals ``(n, F)`` and,
  per environment, the weights ``(n,)`` of the Gaussian kernel and its scale
  ``1 / (h median d2)`` (the median over the genotypes of the fit).

A new individual's prediction is the fixed part at the mean of the training
levels and covariates (:meth:`~gperceiver.baselines.FixedDesign.mean_row`) plus
its BLUP, as for selection candidates; a record's
(:meth:`BaselineModel.predict_records`, ``predict --records``) takes the fixed part
of its own levels and covariates. The directory holds ``config.json``
(``kind: baseline``, ``format_version``, the method, trait, environments with their
fixed-effect levels and variance components), ``model.safetensors`` (float64
arrays) and ``markers.tsv`` (written and read by :mod:`gperceiver.baseline_storage`);
markers of new genotypes are matched by name.

Shape letters: N individuals, M markers, A alleles, n phenotyped individuals,
F polymorphic allele columns, p fixed effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .baselines import (
    DEFAULT_BANDWIDTHS,
    GBLUP,
    NO_FIXED,
    RKHS,
    FixedDesign,
    FixedEffects,
    Kernel,
    ReactionNorm,
    WeightedGBLUP,
    allele_effect_predictions,
    blup_allele_effects,
    environment_kernel,
    feature_distances,
    kernel_columns,
    kernel_features,
    mixed_weights,
    weighted_kernels,
)
from .baselines.kernels import _squared_distances
from .data import EnvCovariates, Genotypes, MarkerMap, Phenotypes
from .io import InputError
from .selection import COMPONENT_COLUMNS, variance_components

# predict new individuals
BASELINE_METHODS = ("gblup", "rkhs", "gblup-weighted", "gblup-main", "gblup-rn")
PREDICTION_COLUMNS = ["name", "block", "prediction", "gebv"]


@dataclass
class EnvironmentSolution:
    """One environment's fit: ``solution`` is the allele effects ``(M, A)``
    (GBLUP) or the kernel weights ``(n,)`` over the model's features (RKHS)."""

    block: int  # the code of Phenotypes.table
    label: object  # what outputs show (a name, or the code)
    design: FixedDesign
    beta: np.ndarray  # (p,)
    solution: np.ndarray
    components: pd.DataFrame  # COMPONENT_COLUMNS, fold "all"
    scale: float | None = None  # RKHS: 1 / (bandwidth * median squared distance)

    @property
    def fixed_part(self) -> float:
        """The fixed part of a record at the mean training levels/covariates."""
        return float(self.design.mean_row() @ self.beta)


@dataclass
class BaselineModel:
    """A fitted GBLUP / RKHS / weighted GBLUP that predicts new genotypes.

    ``frequencies`` ``(M, A)`` centre the dosages as in the fit; RKHS models also
    hold ``features`` ``(n, F)``, ``keep`` ``(M * A,)`` and ``column_scale``
    ``(F,)`` (:func:`~gperceiver.baselines.kernel_columns`).
    """

    method: str
    markers: MarkerMap
    ploidy: int
    n_alleles: int
    frequencies: np.ndarray
    environments: list[EnvironmentSolution]
    trait: str = "response"
    features: np.ndarray | None = None
    keep: np.ndarray | None = None
    column_scale: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def aligned(self, genotypes: Genotypes, source="genotypes") -> Genotypes:
        """``genotypes`` at the model's markers, matched by name, in its order;
        refuses (:class:`InputError`) another ploidy, a missing marker or an
        allele id the model never had."""
        if genotypes.ploidy != self.ploidy:
            raise InputError(
                source, None,
                f"ploidy {genotypes.ploidy}, the model was fitted on ploidy "
                f"{self.ploidy}", "give genotypes of the same ploidy",
            )  # fmt: skip
        lookup = {n: i for i, n in enumerate(genotypes.markers.names.tolist())}
        index = np.array([lookup.get(n, -1) for n in self.markers.names.tolist()])
        lacking = self.markers.names[index < 0]
        if len(lacking):
            raise InputError(
                source, None,
                f"lacks {len(lacking)} of the model's {len(self.markers)} markers, "
                f"e.g. {str(lacking[0])!r}",
                "give genotypes of every marker in the model's markers.tsv",
            )  # fmt: skip
        alleles = genotypes.alleles[:, index]
        if alleles.size and int(alleles.max()) > self.n_alleles:
            raise InputError(
                source, None,
                f"allele id {int(alleles.max())} at the model's markers, the model "
                f"knows {self.n_alleles} alleles per marker",
                "give the markers with the alleles (REF/ALT) of the fit",
            )  # fmt: skip
        return Genotypes(alleles, genotypes.names, self.markers, self.n_alleles)

    def genetic_values(self, genotypes: Genotypes, source="genotypes") -> np.ndarray:
        """BLUPs ``(N, E)`` of every individual of ``genotypes`` in every
        environment of the model (``E = len(environments)``)."""
        genotypes = self.aligned(genotypes, source)
        out = np.zeros((genotypes.n_individuals, len(self.environments)))
        if self.method == "rkhs":
            z = kernel_features(
                genotypes, self.frequencies, self.keep, self.column_scale
            )
            d2 = feature_distances(z, self.features)  # (N, n)
            for e, env in enumerate(self.environments):
                out[:, e] = np.exp(-d2 * env.scale) @ env.solution
            return out
        for e, env in enumerate(self.environments):
            out[:, e] = allele_effect_predictions(
                genotypes, env.solution, self.frequencies
            )
        return out

    def predict_table(self, genotypes: Genotypes, source="genotypes") -> pd.DataFrame:
        """:data:`PREDICTION_COLUMNS` for every individual x environment:
        ``gebv`` (the BLUP) and ``prediction`` (plus the fixed part at the mean
        training levels and covariates)."""
        gebv = self.genetic_values(genotypes, source)
        fixed = np.array([env.fixed_part for env in self.environments])
        n, e = gebv.shape
        return pd.DataFrame(
            {
                "name": np.repeat(genotypes.names, e),
                "block": np.tile(
                    np.array([env.label for env in self.environments], object), n
                ),
                "prediction": (gebv + fixed[None, :]).ravel(),
                "gebv": gebv.ravel(),
            }
        )

    def predict_records(
        self, genotypes: Genotypes, records: pd.DataFrame, source="genotypes"
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(fixed, genetic)`` parts ``(k,)`` for ``records`` (``name``,
        ``block`` codes and the fixed-effect columns), as ``evaluate`` predicts a
        validation record; NaN in an environment the model does not have."""
        gebv = self.genetic_values(genotypes, source)
        rows = genotypes.index_of(records["name"])
        if (rows < 0).any():
            raise KeyError("records name individuals without genotypes")
        blocks = records["block"].to_numpy()
        fixed, genetic = np.full(len(records), np.nan), np.full(len(records), np.nan)
        for e, env in enumerate(self.environments):
            here = blocks == env.block
            if here.any():
                fixed[here] = env.design.matrix(records[here]) @ env.beta
                genetic[here] = gebv[rows[here], e]
        return fixed, genetic

    def components(self) -> pd.DataFrame:
        """What every environment's fit estimated (:data:`COMPONENT_COLUMNS`)."""
        return pd.concat([env.components for env in self.environments])[
            COMPONENT_COLUMNS
        ].reset_index(drop=True)


def _block_fit(method, relationship, fixed, chosen, bandwidths, records) -> GBLUP:
    if method == "rkhs":
        return RKHS(relationship, bandwidths, fixed=fixed).fit(records, None)
    return GBLUP(chosen or relationship, fixed=fixed).fit(records, None)


def _keep_rkhs_features(model, relationship, table, genotypes):
    """Store in ``model`` the scaled dosages of the phenotyped individuals an RKHS
    fit predicts from; return their rows (of ``relationship``) and the median
    squared distance that scales its bandwidths."""
    fitted = np.unique(relationship.index_of(table["name"]))
    model.keep, model.column_scale = kernel_columns(model.frequencies, genotypes.ploidy)
    features = kernel_features(
        genotypes.subset(individuals=fitted),
        model.frequencies,
        model.keep,
        model.column_scale,
    )  # C order, as it loads: the products, and so the bits, are the same
    model.features = np.ascontiguousarray(features)
    return fitted, _squared_distances(relationship.matrix)[1]


def fit_baseline(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    method: str = "gblup",
    fixed: FixedEffects = NO_FIXED,
    marker_weights: np.ndarray | None = None,
    bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS,
    trait: str = "response",
    relationship: Kernel | None = None,
    covariates: EnvCovariates | None = None,
) -> BaselineModel:
    """Fit ``method`` per environment (``gblup-main``, ``gblup-rn``: over every
    environment at once) on every record of ``phenotypes`` and write the solution
    to predict any genotype.

    Parameters
    ----------
    phenotypes : Phenotypes
        The records (every name genotyped); ``environment_labels`` name the
        environments in outputs.
    genotypes : Genotypes
        Every genotyped individual (their frequencies centre the dosages and
        their relationship is the kernel, as in ``evaluate``), phenotyped or not.
    method : str
        One of :data:`BASELINE_METHODS`.
    fixed : FixedEffects
        Fixed effects beside the intercept (levels learnt from the records).
    marker_weights : ndarray, optional
        ``(M,)`` prior of ``gblup-weighted`` (how much it counts chosen by REML
        over every environment, :class:`~gperceiver.baselines.WeightedGBLUP`).
    bandwidths : tuple of float
        RKHS candidates (units of the median squared distance).
    relationship : Kernel, optional
        VanRaden's G of ``genotypes`` (computed if absent).
    covariates : EnvCovariates, optional
        ``gblup-rn``'s environment covariates (codes of ``phenotypes``'
        environments, new ones included).

    Returns
    -------
    BaselineModel
    """
    if method not in BASELINE_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {BASELINE_METHODS}")
    relationship = relationship or Kernel.relationship(genotypes)
    frequencies = genotypes.allele_frequencies()
    if method in ("gblup-main", "gblup-rn"):
        model = BaselineModel(
            method, genotypes.markers, genotypes.ploidy, genotypes.n_alleles,
            frequencies, [], trait,
        )  # fmt: skip
        if method == "gblup-rn":
            return _fit_reaction_norm(
                model, phenotypes, genotypes, relationship, fixed, covariates
            )
        return _fit_main_effects(model, phenotypes, genotypes, relationship, fixed)
    table, chosen, weights, info = phenotypes.table, None, None, {}
    if method == "gblup-weighted":
        chosen, weights, info["mix"] = _weighted_choice(
            genotypes, marker_weights, fixed, table
        )
    labels = phenotypes.environment_labels
    model = BaselineModel(
        method, genotypes.markers, genotypes.ploidy, genotypes.n_alleles,
        frequencies, [], trait, info=info,
    )  # fmt: skip
    rkhs_features = None
    if method == "rkhs":
        rkhs_features = _keep_rkhs_features(model, relationship, table, genotypes)
    for block in np.sort(table["block"].unique()):
        records = table[table["block"] == block]
        fit = _block_fit(method, relationship, fixed, chosen, bandwidths, records)
        label = block.item() if labels is None else labels[int(block)]
        frame = variance_components(fit, method, label, "all", with_se=True)
        solution, scale = _solution(fit, genotypes, frequencies, weights, rkhs_features)
        env = EnvironmentSolution(
            int(block), label, fit.design_, fit.fit_.beta, solution, frame, scale
        )
        model.environments.append(env)
    return model


def _weighted_choice(genotypes, marker_weights, fixed, table):
    """``gblup-weighted``'s relationship, per-marker weights and mix, chosen by
    REML over every environment's records."""
    if marker_weights is None:
        raise ValueError("gblup-weighted needs marker weights")
    candidates = weighted_kernels(genotypes, marker_weights)
    weighted = WeightedGBLUP(candidates, fixed=fixed).fit(table)
    mix = weighted.mix_
    return weighted.relationship_, mixed_weights(marker_weights, mix), mix


def _solution(fit, genotypes, frequencies, weights, rkhs_features):
    """What one environment's fit keeps to predict any genotype: allele effects
    (GBLUP, weighted) with no scale, or the kernel weights on the fitted
    individuals and the inverse bandwidth (RKHS: ``rkhs_features`` = the fitted
    individuals' rows and the median squared distance)."""
    if rkhs_features is None:
        effects = blup_allele_effects(
            genotypes, fit.individuals_, fit.fit_.weights, frequencies, weights
        )
        return effects, None
    fitted, median = rkhs_features
    on_fitted = np.bincount(
        np.searchsorted(fitted, fit.individuals_), fit.fit_.weights,
        minlength=len(fitted),
    )  # fmt: skip
    return on_fitted, 1.0 / (fit.bandwidth_ * median)


def _fit_main_effects(
    model: BaselineModel,
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    relationship: Kernel,
    fixed: FixedEffects,
) -> BaselineModel:
    """``gblup-main``: ``y = mu_env + X b + g + e`` on every record, ``g ~ N(0,
    s2g G)`` shared by the environments (the model of
    :class:`~gperceiver.baselines.ReactionNorm` without interaction), fitted as
    one GBLUP with the environment (``block``) a fixed factor. Each environment
    gets the one solution and the fixed effects without the factor, its level's
    effect added to the intercept (its mean)."""
    table, labels = phenotypes.table, phenotypes.environment_labels
    with_block = FixedEffects(("block", *fixed.factors), fixed.covariates)
    fit = GBLUP(relationship, fixed=with_block).fit(table, None)
    solution = blup_allele_effects(
        genotypes, fit.individuals_, fit.fit_.weights, model.frequencies
    )
    design = FixedDesign(fixed).fit(table)  # the same levels and means, no block
    names, beta = fit.design_.names_, fit.fit_.beta
    kept = [i for i, name in enumerate(names) if not name.startswith("block=")]
    frame = variance_components(fit, model.method, "all", "all", with_se=True)
    for block in np.sort(table["block"].unique()):
        label = block.item() if labels is None else labels[int(block)]
        level = f"block={fit.design_.levels_['block'][0]}"  # the reference: 0
        column = f"block={block}"
        own = beta[kept].copy()
        own[0] += beta[names.index(column)] if column != level else 0.0
        env = EnvironmentSolution(
            int(block), label, design, own, solution, frame.assign(block=label)
        )
        model.environments.append(env)
    return model


def _fit_reaction_norm(
    model: BaselineModel,
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    relationship: Kernel,
    fixed: FixedEffects,
    covariates: EnvCovariates | None,
) -> BaselineModel:
    """``gblup-rn``: :class:`~gperceiver.baselines.ReactionNorm` with the
    environment kernel of ``covariates`` over the records' environments and the
    covariates' own, fitted on every record. With the records' solution ``w``,
    environment ``j``'s BLUP is ``G[:, i_r] (s2g + s2ge Omega[j, e_r]) w_r``, so
    its allele effects are :func:`blup_allele_effects` of those weights; an
    environment without records gets the mean of the environment means."""
    if covariates is None:
        raise InputError(
            "--method", None, "gblup-rn needs environment covariates",
            "pass --covariates FILE (the table finetune and evaluate read)",
        )  # fmt: skip
    table, labels = phenotypes.table, phenotypes.environment_labels
    codes = np.union1d(table["block"].unique(), covariates.environments)
    codes = codes.astype(np.int64)
    omega = environment_kernel(covariates, codes)
    fit = ReactionNorm(relationship, omega, codes, True, fixed).fit(table, genotypes)
    means = dict(zip(fit.env_ids_.tolist(), fit.means_.tolist(), strict=True))
    frame = _reaction_norm_components(fit)
    w = fit.record_weights_
    for row, code in enumerate(codes.tolist()):
        weights = w * (fit.s2g_ + fit.s2ge_ * omega[row, fit.record_environments_])
        solution = blup_allele_effects(
            genotypes, fit.record_individuals_, weights, model.frequencies
        )
        label = code if labels is None else labels[int(code)]
        mean = means.get(row, float(fit.means_.mean()))
        beta = np.concatenate([[mean], fit.beta_])
        env = EnvironmentSolution(
            int(code), label, fit.design_, beta, solution, frame.assign(block=label)
        )
        model.environments.append(env)
    return model


def _reaction_norm_components(fit) -> pd.DataFrame:
    """:data:`COMPONENT_COLUMNS` of a fitted reaction norm: ``s2g``, ``s2ge``,
    ``s2e`` and the log-likelihood (no standard errors)."""
    rows = [
        ("s2g", fit.s2g_), ("s2ge", fit.s2ge_), ("s2e", fit.s2e_),
        ("log_likelihood", fit.log_likelihood_),
    ]  # fmt: skip
    return pd.DataFrame(
        [
            {"method": "gblup-rn", "block": "all", "fold": "all", "component": name,
             "value": float(value), "se": np.nan}
            for name, value in rows
        ],
        columns=COMPONENT_COLUMNS,
    )  # fmt: skip
