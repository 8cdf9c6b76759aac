"""Classical baselines: GBLUP and Gaussian-kernel RKHS with REML variance components.

Both fit ``y = X b + Z g + e`` with ``g ~ N(0, s2g K)`` over genotyped individuals
and ``e ~ N(0, s2e I)`` over records; ``Z`` maps records to individuals, so an
individual may have several records (replicates). Kernels are built from the
genotypes of *all* individuals, without phenotypes (the usual practice: it uses no
response of a validation individual), and BLUPs are returned for all of them.

Shape letters: N individuals in the kernel, n records, p fixed effects, M markers,
A alleles, P ploidy.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import linalg, optimize

from .data import Genotypes

LOG_DELTA_BOUNDS = (-10.0, 10.0)  # search range of log(s2e / s2g)
N_GRID = 100  # grid points over LOG_DELTA_BOUNDS before Brent refinement
DEFAULT_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)  # RKHS grid, in median-distance units


def genomic_relationship(
    genotypes: Genotypes, frequencies: np.ndarray | None = None, chunk: int = 1024
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
    numerator = np.zeros((genotypes.n_individuals,) * 2, dtype=np.float64)
    denominator = 0.0
    for z, variance in _centred_dosages(genotypes, frequencies, chunk):
        keep = variance.ravel() > 0
        z = z.reshape(len(z), -1)[:, keep]
        numerator += z @ z.T
        denominator += variance.ravel()[keep].sum()
    if denominator == 0:
        raise ValueError("no polymorphic marker: the relationship matrix is undefined")
    return numerator / denominator


def _centred_dosages(genotypes: Genotypes, frequencies: np.ndarray | None, chunk: int):
    """Chunks over markers: centred dosages ``(N, c, A)`` float64 (missing copies
    mean-imputed, so they centre to 0) and allele variances ``P p (1 - p)`` ``(c, A)``.
    """
    if frequencies is None:
        frequencies = genotypes.allele_frequencies()
    ploidy = genotypes.ploidy
    for start in range(0, genotypes.n_markers, chunk):
        index = np.arange(start, min(start + chunk, genotypes.n_markers))
        p = frequencies[index]  # (c, A)
        dosage = genotypes.subset(markers=index).dosages(p).astype(np.float64)
        yield dosage - ploidy * p[None], ploidy * p * (1.0 - p)


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
    diag = np.diag(relationship)
    d2 = np.maximum(diag[:, None] + diag[None, :] - 2.0 * relationship, 0.0)
    median = np.median(d2[np.triu_indices(len(d2), k=1)])
    if not median > 0:
        raise ValueError("individuals are identical: the median distance is zero")
    return np.exp(-d2 / (bandwidth * median))


@dataclass(frozen=True)
class MixedModelFit:
    """REML fit of ``y = X b + Z g + e``.

    ``blup`` ``(N,)`` holds the BLUP of ``g`` for every individual of the kernel,
    trained or not; ``h2 = s2g / (s2g + s2e)`` is on the scale of the kernel
    (diagonal about 1 for VanRaden's G in an outbred population at Hardy-Weinberg
    equilibrium, about 2 for inbred lines). ``log_likelihood`` is the restricted
    log-likelihood without the ``log |X'X|`` term, comparable between kernels
    fitted to the same ``y`` and ``X``.
    """

    s2g: float
    s2e: float
    h2: float
    delta: float
    beta: np.ndarray  # (p,)
    blup: np.ndarray  # (N,)
    log_likelihood: float
    weights: np.ndarray  # (n,) H^-1 (y - X b): blup = K[:, records] @ weights
    # (n,) y_i minus its prediction from a fit without record i (same delta)
    loo_residuals: np.ndarray


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


def _restricted_log_likelihood(
    log_delta: np.ndarray, eta2: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Profiled REML log-likelihood at each ``log_delta`` (any shape)."""
    r = len(values)
    shifted = values + np.exp(np.asarray(log_delta))[..., None]  # (..., r)
    quadratic = (eta2 / shifted).sum(-1)
    return 0.5 * (
        r * np.log(r / (2 * np.pi))
        - r
        - r * np.log(quadratic)
        - np.log(shifted).sum(-1)
    )


def _best_log_delta(eta2: np.ndarray, values: np.ndarray) -> float:
    """Grid over ``LOG_DELTA_BOUNDS`` then bounded Brent around the best point."""
    grid = np.linspace(*LOG_DELTA_BOUNDS, N_GRID + 1)
    on_grid = _restricted_log_likelihood(grid, eta2, values)
    best = int(np.argmax(on_grid))
    result = optimize.minimize_scalar(
        lambda x: -_restricted_log_likelihood(x, eta2, values),
        bounds=(grid[max(best - 1, 0)], grid[min(best + 1, N_GRID)]),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(result.x) if -result.fun >= on_grid[best] else float(grid[best])


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


def reml(
    y: np.ndarray,
    kernel: Kernel | np.ndarray,
    individuals: np.ndarray,
    covariates: np.ndarray | None = None,
    delta: float | None = None,
) -> MixedModelFit:
    """REML variance components and BLUPs by the EMMA eigendecomposition.

    One eigendecomposition of ``S (K_rr + I) S`` (``S`` projects orthogonally to
    ``X``, ``K_rr`` is the kernel between records) turns the restricted
    log-likelihood into a cheap function of ``delta = s2e / s2g``, maximised over
    ``log(delta)`` by a grid on ``[-10, 10]`` refined by bounded Brent. Then
    ``H = K_rr + delta I``, ``b`` is the GLS estimate and
    ``blup = K[:, records] H^-1 (y - X b)`` for every individual.

    Parameters
    ----------
    y : ndarray
        ``(n,)`` responses.
    kernel : Kernel or ndarray
        ``(N, N)`` kernel over individuals.
    individuals : ndarray
        ``(n,)`` int, the kernel row of each record (the incidence matrix ``Z``).
    covariates : ndarray, optional
        ``(n, p)`` fixed-effect design ``X``; default: an intercept column.
    delta : float, optional
        Fix ``s2e / s2g`` instead of estimating it.

    Returns
    -------
    MixedModelFit

    Examples
    --------
    Four records for each of 30 individuals, ``s2g = s2e = 1``:

    >>> rng = np.random.default_rng(0)
    >>> w = rng.normal(size=(30, 300))
    >>> k = w @ w.T / 300
    >>> g = rng.multivariate_normal(np.zeros(30), k)
    >>> individuals = np.repeat(np.arange(30), 4)
    >>> y = 3.0 + g[individuals] + rng.normal(size=120)
    >>> fit = reml(y, k, individuals)
    >>> round(fit.h2, 1), round(float(np.corrcoef(fit.blup, g)[0, 1]), 1)
    (0.5, 0.9)
    """
    if not isinstance(kernel, Kernel):
        kernel = Kernel(kernel, memory=0)
    y = np.asarray(y, dtype=np.float64)
    individuals = np.asarray(individuals, dtype=np.int64)
    if covariates is None:
        covariates = np.ones((len(y), 1))
    covariates = np.asarray(covariates, dtype=np.float64)
    if len(individuals) != len(y) or len(covariates) != len(y):
        raise ValueError("y, individuals and covariates must have one row per record")
    spectrum = kernel.spectrum(individuals, covariates)
    if len(spectrum.values) == 0:
        raise ValueError("too few records: no degree of freedom left after X")
    eta = spectrum.vectors.T @ y
    eta2 = eta**2
    if eta2.sum() <= 1e-20 * (y @ y):  # y lies in the column space of X
        raise ValueError("the responses are explained exactly by X: nothing to fit")
    if delta is None:
        log_delta = _best_log_delta(eta2, spectrum.values)
    else:
        log_delta = float(np.log(delta))
    delta = float(np.exp(log_delta))
    shifted = spectrum.values + delta
    s2g = float((eta2 / shifted).sum() / len(shifted))
    p_y = spectrum.vectors @ (eta / shifted)  # H^-1 (y - X b)
    kernel_records = kernel.matrix[:, individuals]  # (N, n)
    fitted_fixed = y - kernel_records[individuals] @ p_y - delta * p_y  # X b
    beta = np.linalg.lstsq(covariates, fitted_fixed, rcond=None)[0]
    loglik = float(_restricted_log_likelihood(log_delta, eta2, spectrum.values))
    return MixedModelFit(
        s2g=s2g,
        s2e=delta * s2g,
        h2=1.0 / (1.0 + delta),
        delta=delta,
        beta=beta,
        blup=kernel_records @ p_y,
        log_likelihood=loglik,
        weights=p_y,
        # residual of record i = delta (P y)_i and its hat value 1 - delta P_ii, with
        # P = U diag(1 / (lam + delta)) U' the REML projection
        loo_residuals=p_y / ((spectrum.vectors**2) @ (1.0 / shifted)),
    )


def _records(records: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    missing = {"name", "response"} - set(records.columns)
    if missing:
        raise ValueError(f"training records lack column(s) {sorted(missing)}")
    y = records["response"].to_numpy(dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError("training responses must be finite")
    return records["name"].to_numpy(), y


class GBLUP:
    """Genomic BLUP: REML on VanRaden's relationship matrix with an intercept.

    Fit once per environment (block). The relationship matrix is computed from all
    genotypes, phenotyped or not (standard practice; no response enters it), so a
    caller fitting many splits passes it once as ``relationship``.

    Parameters
    ----------
    relationship : Kernel, optional
        :meth:`Kernel.relationship` of the genotypes; computed in ``fit`` if absent.
    delta : float, optional
        Fix ``s2e / s2g`` instead of estimating it by REML.

    Examples
    --------
    >>> names = np.array(["a", "b", "c", "d"])
    >>> k = Kernel(np.eye(4) + 0.5, names)
    >>> records = pd.DataFrame({"name": ["a", "b", "c"], "response": [1.0, 2.0, 3.0]})
    >>> model = GBLUP(relationship=k, delta=1.0).fit(records, genotypes=None)
    >>> model.predict(["a", "d"]).round(3)
    array([1.5, 2. ])
    """

    def __init__(self, relationship: Kernel | None = None, delta: float | None = None):
        self.relationship = relationship
        self.delta = delta

    def _relationship(self, genotypes: Genotypes | None) -> Kernel:
        if self.relationship is not None:
            return self.relationship
        if genotypes is None:
            raise ValueError("pass genotypes or a precomputed relationship")
        return Kernel.relationship(genotypes)

    def fit(self, records: pd.DataFrame, genotypes: Genotypes | None) -> GBLUP:
        """Fit on ``records`` (columns ``name``, ``response``); returns ``self``."""
        names, y = _records(records)
        self.kernel_ = self._relationship(genotypes)
        self.fit_ = reml(
            y, self.kernel_, self.kernel_.index_of(names), delta=self.delta
        )
        return self

    def predict(self, names) -> np.ndarray:
        """Intercept plus BLUP for each name, ``(len(names),)`` float64."""
        return self.fit_.beta[0] + self.fit_.blup[self.kernel_.index_of(names)]


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
    loo_predictions: np.ndarray  # (N,) of the fitted individuals, each left out


def additive_effects(
    genotypes: Genotypes,
    y: np.ndarray,
    frequencies: np.ndarray | None = None,
    chunk: int = 4096,
) -> AdditiveFit:
    """REML GBLUP on the individuals of ``genotypes`` (one response each, ``(N,)``),
    returned as allele effects.

    With centred dosages ``Z`` and ``G = Z Z' / c``, the BLUP of a new individual
    is ``z' Z' H^-1 (y - X b) / c``, so ``effects = Z' H^-1 (y - X b) / c``. Memory
    is ``O(N^2 + N * chunk * A)``.
    """
    if frequencies is None:
        frequencies = genotypes.allele_frequencies()
    y = np.asarray(y, dtype=np.float64)
    relationship = genomic_relationship(genotypes, frequencies, chunk)
    fit = reml(y, relationship, np.arange(genotypes.n_individuals))
    denominator = float((genotypes.ploidy * frequencies * (1 - frequencies)).sum())
    effects = np.concatenate(
        [
            np.einsum("n,nca->ca", fit.weights, z) / denominator
            for z, _ in _centred_dosages(genotypes, frequencies, chunk)
        ]
    )
    return AdditiveFit(
        float(fit.beta[0]), effects, frequencies, fit.h2, y - fit.loo_residuals
    )


class RKHS(GBLUP):
    """RKHS regression with a Gaussian kernel over centred dosages.

    The kernel is ``exp(-D2 / (h median(D2)))`` (:func:`gaussian_kernel`). The
    bandwidth ``h`` is the one of ``bandwidths`` whose REML fit to the training
    records has the highest restricted likelihood (same ``y`` and ``X`` for every
    candidate, so the likelihoods compare); no validation record is used.

    Parameters
    ----------
    relationship : Kernel, optional
        :meth:`Kernel.relationship` of all genotypes; computed in ``fit`` if absent.
        Its Gaussian kernels and their decompositions are memoised on it.
    bandwidths : sequence of float
        Candidate ``h`` values.
    """

    def __init__(
        self,
        relationship: Kernel | None = None,
        bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS,
    ):
        super().__init__(relationship)
        self.bandwidths = tuple(bandwidths)

    def fit(self, records: pd.DataFrame, genotypes: Genotypes | None) -> RKHS:
        """Fit every bandwidth, keep the most likely; returns ``self``."""
        names, y = _records(records)
        relationship = self._relationship(genotypes)
        individuals = relationship.index_of(names)
        best = None
        for h in self.bandwidths:
            kernel = relationship.gaussian(h)
            fit = reml(y, kernel, individuals)
            if best is None or fit.log_likelihood > best[2].log_likelihood:
                best = (h, kernel, fit)
        self.bandwidth_, self.kernel_, self.fit_ = best
        return self
