"""Genomic relationship matrices: VanRaden's G for any ploidy and number of
alleles, weighted by marker weights, and the weight mixes of a prior.

Shape letters: N individuals, M markers, A alleles, P ploidy.
"""

from __future__ import annotations

import numpy as np

from ..data import Genotypes

# prior weight mixes tried by weighted GBLUP/RKHS (see mixed_weights): 0 ignores
# the prior, 1 uses it alone; 0.9 lets a prior that is nearly right keep a little
# of every other marker
KERNEL_WEIGHT_MIXES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


def genomic_relationship(
    genotypes: Genotypes,
    frequencies: np.ndarray | None = None,
    chunk: int = 1024,
    marker_weights: np.ndarray | None = None,
) -> np.ndarray:
    """VanRaden's genomic relationship matrix, generalised to any ploidy and alleles.

    ``G = Z Z' / sum_{m,a} P p_ma (1 - p_ma)`` where ``Z`` holds every allele's
    dosage minus its expectation ``P p_ma``. For diploid biallelic markers both
    allele columns carry the same centred dosage up to sign, so numerator and
    denominator are both doubled and ``G`` equals VanRaden's method 1
    (``W W' / 2 sum p q``). Allele columns with ``p (1 - p) = 0`` (monomorphic
    markers) are dropped. Markers are processed in chunks, so memory is
    ``O(N^2 + N * chunk * A)``.

    Parameters
    ----------
    genotypes : Genotypes
        ``(N, M, P)`` allele ids; missing copies are mean-imputed.
    frequencies : ndarray, optional
        ``(M, A)`` reference allele frequencies; default: those of ``genotypes``.
    chunk : int
        Markers per chunk.
    marker_weights : ndarray, optional
        ``(M,)`` non-negative weights ``w``: weighted GBLUP,
        ``G = Z W Z' / sum_{m,a} w_m P p_ma (1 - p_ma)`` (see :func:`mixed_weights`).

    Returns
    -------
    ndarray
        ``(N, N)`` float64.

    Examples
    --------
    >>> from gperceiver.data import MarkerMap
    >>> markers, _ = MarkerMap.from_columns(["1", "1"], ["a", "b"], [1, 2])
    >>> alleles = np.array([[[1, 1], [1, 2]], [[1, 2], [2, 2]], [[2, 2], [1, 1]]])
    >>> g = Genotypes(alleles.astype(np.uint8), np.array(["x", "y", "z"]), markers, 2)
    >>> genomic_relationship(g).round(3)
    array([[ 1.,  0., -1.],
           [ 0.,  1., -1.],
           [-1., -1.,  2.]])
    """
    numerator, denominator = _relationship_parts(
        genotypes, frequencies, chunk, marker_weights
    )
    if denominator == 0:
        raise ValueError("no polymorphic marker: the relationship matrix is undefined")
    return numerator / denominator


def _relationship_parts(genotypes, frequencies, chunk, marker_weights=None):
    """``Z W Z'`` ``(N, N)`` and ``sum w P p (1 - p)``: :func:`genomic_relationship`
    before the division."""
    numerator = np.zeros((genotypes.n_individuals,) * 2, dtype=np.float64)
    denominator = 0.0
    for z, variance in _centred_dosages(genotypes, frequencies, chunk, marker_weights):
        keep = variance.ravel() > 0
        z = z.reshape(len(z), -1)[:, keep]
        numerator += z @ z.T
        denominator += variance.ravel()[keep].sum()
    return numerator, denominator


def relationship_mixes(
    genotypes: Genotypes,
    frequencies: np.ndarray,
    prior: np.ndarray | None,
    mixes=KERNEL_WEIGHT_MIXES,
    chunk: int = 1024,
) -> list[tuple[float, np.ndarray]]:
    """Weighted :func:`genomic_relationship` ``(N, N)`` for each mix of
    :func:`mixed_weights` ``(prior, mix)`` whose kernel is defined, as
    ``(mix, G)`` pairs; ``[(0.0, G)]`` without a prior.

    ``Z W Z'`` and the denominator are linear in the weights, so two passes over
    the markers (uniform weights and the prior alone) give every mix.
    """
    if prior is None:
        return [(0.0, genomic_relationship(genotypes, frequencies, chunk))]
    uniform = _relationship_parts(genotypes, frequencies, chunk)
    alone = _relationship_parts(genotypes, frequencies, chunk, mixed_weights(prior, 1))
    out = []
    for mix in mixes:
        denominator = (1 - mix) * uniform[1] + mix * alone[1]
        if denominator > 0:
            out.append((mix, ((1 - mix) * uniform[0] + mix * alone[0]) / denominator))
    if not out:
        raise ValueError("no polymorphic marker: the relationship matrix is undefined")
    return out


def _centred_dosages(
    genotypes: Genotypes,
    frequencies: np.ndarray | None,
    chunk: int,
    marker_weights: np.ndarray | None = None,
):
    """Chunks over markers: centred dosages ``(N, c, A)`` float64 (missing copies
    mean-imputed, so they centre to 0) and allele variances ``P p (1 - p)`` ``(c, A)``;
    with ``marker_weights`` ``w`` ``(M,)``, dosages times ``sqrt(w)`` and variances
    times ``w``.
    """
    if frequencies is None:
        frequencies = genotypes.allele_frequencies()
    ploidy = genotypes.ploidy
    for start in range(0, genotypes.n_markers, chunk):
        index = np.arange(start, min(start + chunk, genotypes.n_markers))
        p = frequencies[index]  # (c, A)
        dosage = genotypes.subset(markers=index).dosages(p).astype(np.float64)
        z, variance = dosage - ploidy * p[None], ploidy * p * (1.0 - p)
        if marker_weights is not None:
            w = marker_weights[index][:, None]  # (c, 1)
            z, variance = z * np.sqrt(w)[None], variance * w
        yield z, variance


def mixed_weights(values: np.ndarray, mix: float) -> np.ndarray:
    """Marker weights ``(M,)`` with mean 1: ``(1 - mix) + mix * values / mean(values)``.

    ``mix`` 0 weighs every marker alike (plain GBLUP/RKHS), 1 by the prior
    ``values`` alone (non-negative, some positive: a QTL indicator, a GWAS score
    from other data). In between, about a share ``mix`` of the kernel's variance
    follows the prior.
    """
    values = np.asarray(values, dtype=np.float64)
    return (1.0 - mix) + mix * values / values.mean()
