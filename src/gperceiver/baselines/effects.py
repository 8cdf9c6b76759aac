"""GBLUP and RKHS written so that any genotype can be predicted: allele effects
(:func:`additive_effects`) and kept kernel features (:func:`kernel_effects`).

Shape letters: N individuals, n fitted individuals, M markers, A alleles, F kept
allele columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data import Genotypes, MarkerMap
from .kernels import DEFAULT_BANDWIDTHS
from .mixed_model import best_bandwidth, reml
from .relationship import _centred_dosages, genomic_relationship


@dataclass(frozen=True)
class AdditiveFit:
    """GBLUP written as allele effects, to predict any genotype.

    ``prediction = intercept + sum_{m,a} (dosage_ma - P p_ma) effects_ma`` with
    missing copies mean-imputed; equals GBLUP's BLUP for every individual whose
    relationships are computed with the same ``frequencies``.
    """

    intercept: float
    effects: np.ndarray  # (M, A) per allele copy
    frequencies: np.ndarray  # (M, A) centring
    h2: float
    log_likelihood: float  # restricted, see MixedModelFit
    loo_predictions: np.ndarray  # (N,) of the fitted individuals, each left out


def additive_effects(
    genotypes: Genotypes,
    y: np.ndarray,
    frequencies: np.ndarray | None = None,
    chunk: int = 4096,
    marker_weights: np.ndarray | None = None,
    relationship: np.ndarray | None = None,
) -> AdditiveFit:
    """REML GBLUP on the individuals of ``genotypes`` (one response each, ``(N,)``),
    returned as allele effects; weighted GBLUP with ``marker_weights`` ``(M,)``.

    With centred dosages ``Z``, weights ``W`` and ``G = Z W Z' / c``, the BLUP of a
    new individual is ``z' W Z' H^-1 (y - X b) / c``, so
    ``effects = W Z' H^-1 (y - X b) / c``. Memory is ``O(N^2 + N * chunk * A)``.
    ``relationship``: that ``G`` ``(N, N)`` if already computed.
    """
    if frequencies is None:
        frequencies = genotypes.allele_frequencies()
    weights = np.ones(genotypes.n_markers) if marker_weights is None else marker_weights
    y = np.asarray(y, dtype=np.float64)
    if relationship is None:
        relationship = genomic_relationship(genotypes, frequencies, chunk, weights)
    fit = reml(y, relationship, np.arange(genotypes.n_individuals))
    effects = blup_allele_effects(
        genotypes, np.arange(genotypes.n_individuals), fit.weights, frequencies,
        weights, chunk,
    )  # fmt: skip
    return AdditiveFit(
        float(fit.beta[0]),
        effects,
        frequencies,
        fit.h2,
        fit.log_likelihood,
        y - fit.loo_residuals,
    )


def blup_allele_effects(
    genotypes: Genotypes,
    individuals: np.ndarray,
    weights: np.ndarray,
    frequencies: np.ndarray | None = None,
    marker_weights: np.ndarray | None = None,
    chunk: int = 4096,
) -> np.ndarray:
    """The allele effects ``(M, A)`` of a GBLUP solution: rrBLUP's marker
    effects, per allele copy.

    A fit on ``G = Z W Z' / c`` (:func:`genomic_relationship` with these
    ``frequencies`` ``(M, A)``, default those of ``genotypes``, and
    ``marker_weights`` ``(M,)``) has ``blup = G[:, records] @ weights``, so
    ``effects = W Z[records]' weights / c`` and any genotype's BLUP is
    ``sum_{m,a} (dosage_ma - P p_ma) effects_ma`` (missing copies mean-imputed).
    ``individuals`` ``(n,)`` are the rows of ``genotypes`` of the records and
    ``weights`` ``(n,)`` their ``H^-1 (y - X b)`` (:attr:`MixedModelFit.weights`);
    records of one individual add up. Memory ``O(n * chunk * A)``.
    """
    if frequencies is None:
        frequencies = genotypes.allele_frequencies()
    per_individual = np.bincount(
        np.asarray(individuals), np.asarray(weights, np.float64),
        minlength=genotypes.n_individuals,
    )  # fmt: skip
    rows = np.unique(individuals)
    fitted = genotypes.subset(individuals=rows)
    effects = np.concatenate(
        [
            np.einsum("n,nca->ca", per_individual[rows], z)
            for z, _ in _centred_dosages(fitted, frequencies, chunk)
        ]
    )
    scale = np.ones(genotypes.n_markers) if marker_weights is None else marker_weights
    variance = genotypes.ploidy * frequencies * (1 - frequencies)
    denominator = float((variance * scale[:, None]).sum())
    if denominator == 0:
        raise ValueError("no polymorphic marker: the relationship matrix is undefined")
    return effects * scale[:, None] / denominator


def allele_effect_predictions(
    genotypes: Genotypes, effects: np.ndarray, frequencies: np.ndarray, chunk=4096
) -> np.ndarray:
    """``sum_{m,a} (dosage_ma - P p_ma) effects_ma`` ``(N,)`` of every individual
    (:func:`blup_allele_effects`; same markers and alleles, missing copies
    mean-imputed)."""
    out = np.zeros(genotypes.n_individuals)
    for start, (z, _) in zip(
        range(0, genotypes.n_markers, chunk),
        _centred_dosages(genotypes, frequencies, chunk),
        strict=True,
    ):
        out += np.einsum("nca,ca->n", z, effects[start : start + chunk])
    return out


def marker_effect_frame(
    markers: MarkerMap, effects: np.ndarray, frequencies: np.ndarray, ploidy: int,
    **labels,
) -> pd.DataFrame:  # fmt: skip
    """``effects`` ``(M, A)`` of :func:`blup_allele_effects` as a long table, one
    row per polymorphic allele column: :data:`MARKER_EFFECT_COLUMNS`. ``allele``
    is the allele id (1..A) of the coding, ``frequency`` its frequency (the
    centring: the dosage enters as ``dosage - ploidy * frequency``), ``effect``
    per copy on the response scale; ``labels`` (method, block, fold) fill their
    columns."""
    variance = ploidy * frequencies * (1 - frequencies)
    marker, allele = np.nonzero(variance > 0)
    frame = pd.DataFrame(
        {
            "marker": markers.names[marker],
            "chrom": markers.chrom_labels()[marker],
            "pos": markers.pos[marker],
            "allele": allele + 1,
            "frequency": frequencies[marker, allele],
            "effect": effects[marker, allele],
        }
    )
    labels = {"method": None, "block": None, "fold": None, **labels}
    return frame.assign(**labels)[MARKER_EFFECT_COLUMNS]


MARKER_EFFECT_COLUMNS = [
    "method", "block", "fold", "marker", "chrom", "pos", "allele", "frequency",
    "effect",
]  # fmt: skip


@dataclass(frozen=True)
class KernelFit:
    """RKHS regression (Gaussian kernel) on the fitted individuals, kept so that any
    genotype can be predicted.

    ``prediction = intercept + exp(-|z - z_i|^2 * scale) @ weights`` over the
    fitted individuals ``i``, with ``z`` the centred dosages (``frequencies``,
    missing copies mean-imputed, monomorphic allele columns dropped) times
    ``column_scale``, so that ``z z'`` is :func:`genomic_relationship` (weighted
    by the marker weights the scale holds). Memory is that of ``features``,
    ``(n, M * A)``.
    """

    intercept: float
    weights: np.ndarray  # (n,) H^-1 (y - X b) of the chosen kernel
    features: np.ndarray  # (n, F) scaled centred dosages of the fitted individuals
    keep: np.ndarray  # (M * A,) bool, allele columns with variance > 0
    frequencies: np.ndarray  # (M, A)
    column_scale: np.ndarray  # (F,) see kernel_columns
    scale: float  # 1 / (bandwidth * median squared distance among the fitted)
    bandwidth: float
    h2: float
    log_likelihood: float  # restricted, see MixedModelFit
    loo_predictions: np.ndarray  # (n,) of the fitted individuals, each left out

    def predict(self, genotypes: Genotypes) -> np.ndarray:
        """Predictions ``(N,)`` for every individual of ``genotypes`` (same map)."""
        z = kernel_features(genotypes, self.frequencies, self.keep, self.column_scale)
        d2 = feature_distances(z, self.features)
        return self.intercept + np.exp(-d2 * self.scale) @ self.weights


def feature_distances(z: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``(N, n)`` (clipped at 0) between the rows of
    ``z`` ``(N, F)`` and of ``features`` ``(n, F)`` (:func:`kernel_features`)."""
    d2 = (z**2).sum(1)[:, None] + (features**2).sum(1)[None, :] - 2.0 * z @ features.T
    return np.maximum(d2, 0.0)


def kernel_columns(
    frequencies: np.ndarray, ploidy: int, marker_weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The polymorphic allele columns ``(M * A,)`` bool of allele ``frequencies``
    ``(M, A)`` and the scale ``(F,)`` of each kept column: ``sqrt(w_m / c)``, with
    ``c`` the (weighted) denominator of :func:`genomic_relationship` and ``w``
    ``marker_weights`` (default 1). A marker of weight 0 keeps its columns, scaled
    by 0, so every weighting has the same columns."""
    variance = ploidy * frequencies * (1.0 - frequencies)
    keep = variance.ravel() > 0
    weights = np.ones(len(frequencies)) if marker_weights is None else marker_weights
    column_weights = np.broadcast_to(weights[:, None], variance.shape).ravel()[keep]
    denominator = float((variance.ravel()[keep] * column_weights).sum())
    if denominator == 0:
        raise ValueError(
            "no polymorphic marker with a positive weight: the kernel is undefined"
        )
    return keep, np.sqrt(column_weights / denominator)


def kernel_features(genotypes, frequencies, keep, column_scale) -> np.ndarray:
    """Centred dosages ``(N, F)`` of the ``keep`` allele columns times
    ``column_scale`` (:func:`kernel_columns`)."""
    z = np.concatenate(
        [
            z.reshape(len(z), -1)
            for z, _ in _centred_dosages(genotypes, frequencies, chunk=4096)
        ],
        axis=1,
    )
    return z[:, keep] * column_scale


def kernel_effects(
    genotypes: Genotypes,
    y: np.ndarray,
    frequencies: np.ndarray | None = None,
    bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS,
    marker_weights: np.ndarray | None = None,
    relationship: np.ndarray | None = None,
    features: np.ndarray | None = None,
    kernels: dict | None = None,
) -> KernelFit:
    """REML RKHS on the individuals of ``genotypes`` (one response each, ``(N,)``),
    the bandwidth chosen as in :class:`RKHS` (highest restricted likelihood) and
    the median distance taken among these individuals only, returned as a
    :class:`KernelFit` that predicts new genotypes. ``marker_weights`` ``(M,)``
    weigh the markers' dosages in the distances; ``relationship`` (their weighted
    :func:`genomic_relationship`, ``(N, N)``) and ``features``
    (:func:`kernel_features`, ``(N, F)``) are computed unless given; ``kernels``
    (a dict kept per ``relationship``) lets fits of other responses on the same
    individuals reuse the kernels' decompositions (:func:`best_bandwidth`)."""
    if frequencies is None:
        frequencies = genotypes.allele_frequencies()
    y = np.asarray(y, dtype=np.float64)
    keep, column_scale = kernel_columns(frequencies, genotypes.ploidy, marker_weights)
    if features is None:
        features = kernel_features(genotypes, frequencies, keep, column_scale)
    if relationship is None:
        relationship = features @ features.T
    h, median, fit = best_bandwidth(relationship, y, bandwidths, kernels=kernels)
    return KernelFit(
        intercept=float(fit.beta[0]),
        weights=fit.weights,
        features=features,
        keep=keep,
        frequencies=frequencies,
        column_scale=column_scale,
        scale=1.0 / (h * median),
        bandwidth=h,
        h2=fit.h2,
        log_likelihood=fit.log_likelihood,
        loo_predictions=y - fit.loo_residuals,
    )
