"""Covariance kernels over named individuals: the Gaussian kernel of a
relationship matrix and :class:`Kernel`, which remembers its decompositions.

Shape letters: N individuals in the kernel, n records, p fixed effects.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from ..data import Genotypes
from .relationship import genomic_relationship, relationship_mixes

DEFAULT_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)  # RKHS grid, in median-distance units


def gaussian_kernel(relationship: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel ``exp(-D2 / (h median(D2)))`` from a relationship matrix.

    ``D2_ij = G_ii + G_jj - 2 G_ij`` is the squared Euclidean distance between the
    centred dosages of ``i`` and ``j`` divided by the constant denominator of
    :func:`genomic_relationship`, which the median (over pairs ``i < j``) cancels:
    the kernel is the one over centred dosages.

    Parameters
    ----------
    relationship : ndarray
        ``(N, N)`` genomic relationship matrix.
    bandwidth : float
        ``h``, in units of the median squared distance.

    Returns
    -------
    ndarray
        ``(N, N)`` float64 with unit diagonal.

    Examples
    --------
    >>> g = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    >>> gaussian_kernel(g, 1.0).round(3)
    array([[1.   , 0.368, 0.135],
           [0.368, 1.   , 0.368],
           [0.135, 0.368, 1.   ]])
    """
    d2, median = _squared_distances(relationship)
    return np.exp(-d2 / (bandwidth * median))


def _squared_distances(relationship: np.ndarray) -> tuple[np.ndarray, float]:
    """``D2_ij = G_ii + G_jj - 2 G_ij`` ``(N, N)`` and its median over pairs
    ``i < j`` (positive, else the individuals are all identical)."""
    diag = np.diag(relationship)
    d2 = np.maximum(diag[:, None] + diag[None, :] - 2.0 * relationship, 0.0)
    median = float(np.median(d2[np.triu_indices(len(d2), k=1)]))
    if not median > 0:
        raise ValueError("individuals are identical: the median distance is zero")
    return d2, median


@dataclass(frozen=True)
class _Spectrum:
    """EMMA decomposition ``S (K_rr + I) S = U diag(lam + 1) U'`` restricted to S."""

    vectors: np.ndarray  # (n, n - p)
    values: np.ndarray  # (n - p,) eigenvalues of S K_rr S on the range of S


def _spectrum(kernel_rr: np.ndarray, covariates: np.ndarray) -> _Spectrum:
    u, singular, _ = np.linalg.svd(covariates, full_matrices=False)
    q = u[:, singular > singular.max() * len(covariates) * np.finfo(float).eps]
    # S (K + I) S with S = I - q q', in O(n^2 p) rather than by dense products
    kq = kernel_rr @ q
    q_kq = q @ (q.T @ kq)
    projected = kernel_rr - q @ kq.T - kq @ q.T + q_kq @ q.T - q @ q.T
    projected[np.diag_indices_from(projected)] += 1.0
    values, vectors = linalg.eigh(projected, driver="evd")
    # the first p eigenvalues are 0 (range of X), the others lam + 1 >= 1
    p = q.shape[1]
    return _Spectrum(vectors[:, p:], np.maximum(values[p:] - 1.0, 0.0))


class Kernel:
    """A covariance kernel over named individuals, remembering its decompositions.

    Refitting on the same training individuals and covariates (for instance the
    same fold in every block) reuses the EMMA eigendecomposition; Gaussian kernels
    derived from a relationship matrix are built once per bandwidth.

    Parameters
    ----------
    matrix : ndarray
        ``(N, N)`` symmetric positive semi-definite kernel.
    names : array-like, optional
        ``(N,)`` individual names, the order of ``matrix``.
    memory : int
        Decompositions kept (least recently used ones are dropped).
    """

    def __init__(self, matrix: np.ndarray, names=None, memory: int = 2):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        if self.matrix.ndim != 2 or self.matrix.shape[0] != self.matrix.shape[1]:
            raise ValueError(f"kernel must be square, got {self.matrix.shape}")
        n = len(self.matrix)
        self.names = np.arange(n).astype(str) if names is None else np.asarray(names)
        if len(self.names) != n:
            raise ValueError("kernel names do not match its size")
        self._lookup = {
            name: i for i, name in enumerate(self.names.astype(str).tolist())
        }
        self._memory = memory
        self._spectra: OrderedDict[tuple, _Spectrum] = OrderedDict()
        self._gaussian: dict[float, Kernel] = {}

    @classmethod
    def relationship(cls, genotypes: Genotypes, **kwargs) -> Kernel:
        """VanRaden's :func:`genomic_relationship` of all ``genotypes``."""
        return cls(genomic_relationship(genotypes, **kwargs), genotypes.names)

    def gaussian(self, bandwidth: float) -> Kernel:
        """:func:`gaussian_kernel` of this relationship matrix (memoised)."""
        bandwidth = float(bandwidth)
        if bandwidth not in self._gaussian:
            self._gaussian[bandwidth] = Kernel(
                gaussian_kernel(self.matrix, bandwidth), self.names, self._memory
            )
        return self._gaussian[bandwidth]

    def index_of(self, names) -> np.ndarray:
        """Row of each name, ``(len(names),)`` int64; unknown names raise KeyError."""
        names = np.asarray(names).astype(str).tolist()
        missing = [n for n in names if n not in self._lookup]
        if missing:
            raise KeyError(
                f"{len(missing)} name(s) have no genotypes, e.g. {missing[:3]}"
            )
        return np.array([self._lookup[n] for n in names], dtype=np.int64)

    def spectrum(self, individuals: np.ndarray, covariates: np.ndarray) -> _Spectrum:
        """EMMA decomposition for these records (memoised)."""
        key = (individuals.tobytes(), covariates.shape, covariates.tobytes())
        if key in self._spectra:
            self._spectra.move_to_end(key)
            return self._spectra[key]
        spectrum = _spectrum(self.matrix[np.ix_(individuals, individuals)], covariates)
        self._spectra[key] = spectrum
        while len(self._spectra) > self._memory:
            self._spectra.popitem(last=False)
        return spectrum


def weighted_kernels(
    genotypes: Genotypes, prior: np.ndarray
) -> list[tuple[float, Kernel]]:
    """``(mix, Kernel)`` over all ``genotypes`` for each defined mix of the marker
    weight ``prior`` ``(M,)`` (:func:`~gperceiver.baselines.relationship_mixes`,
    frequencies of all genotypes): the candidates of
    :class:`~gperceiver.baselines.WeightedGBLUP`."""
    mixes = relationship_mixes(genotypes, genotypes.allele_frequencies(), prior)
    return [(mix, Kernel(g, genotypes.names)) for mix, g in mixes]
