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

from .data import EnvCovariates, Genotypes

LOG_DELTA_BOUNDS = (-10.0, 10.0)  # search range of log(s2e / s2g)
N_GRID = 100  # grid points over LOG_DELTA_BOUNDS before Brent refinement
DEFAULT_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)  # RKHS grid, in median-distance units
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
    variance = genotypes.ploidy * frequencies * (1 - frequencies)
    denominator = float((variance * weights[:, None]).sum())
    effects = np.concatenate(
        [
            np.einsum("n,nca->ca", fit.weights, z)
            for z, _ in _centred_dosages(genotypes, frequencies, chunk)
        ]
    )
    return AdditiveFit(
        float(fit.beta[0]),
        effects * weights[:, None] / denominator,
        frequencies,
        fit.h2,
        fit.log_likelihood,
        y - fit.loo_residuals,
    )


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
        d2 = (
            (z**2).sum(1)[:, None]
            + (self.features**2).sum(1)[None, :]
            - 2.0 * z @ self.features.T
        )
        return self.intercept + np.exp(-np.maximum(d2, 0.0) * self.scale) @ self.weights


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
) -> KernelFit:
    """REML RKHS on the individuals of ``genotypes`` (one response each, ``(N,)``),
    the bandwidth chosen as in :class:`RKHS` (highest restricted likelihood) and
    the median distance taken among these individuals only, returned as a
    :class:`KernelFit` that predicts new genotypes. ``marker_weights`` ``(M,)``
    weigh the markers' dosages in the distances; ``relationship`` (their weighted
    :func:`genomic_relationship`, ``(N, N)``) and ``features``
    (:func:`kernel_features`, ``(N, F)``) are computed unless given."""
    if frequencies is None:
        frequencies = genotypes.allele_frequencies()
    y = np.asarray(y, dtype=np.float64)
    keep, column_scale = kernel_columns(frequencies, genotypes.ploidy, marker_weights)
    if features is None:
        features = kernel_features(genotypes, frequencies, keep, column_scale)
    if relationship is None:
        relationship = features @ features.T
    h, median, fit = best_bandwidth(relationship, y, bandwidths)
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


def best_bandwidth(
    relationship: np.ndarray, y: np.ndarray, bandwidths=DEFAULT_BANDWIDTHS
) -> tuple[float, float, MixedModelFit]:
    """REML RKHS of ``y`` ``(N,)`` (one record per individual of the ``(N, N)``
    ``relationship``): the bandwidth of highest restricted likelihood, the median
    squared distance among these individuals and the fit."""
    d2, median = _squared_distances(relationship)
    individuals = np.arange(len(y))
    best = None
    for h in bandwidths:
        fit = reml(y, np.exp(-d2 / (h * median)), individuals)
        if best is None or fit.log_likelihood > best[2].log_likelihood:
            best = (h, median, fit)
    return best


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


def environment_kernel(
    covariates: EnvCovariates, blocks, n_windows: int = 6
) -> np.ndarray:
    """Linear kernel between environments from their covariates (Jarquín 2014).

    ``Omega = W W' / c`` where ``W`` ``(E, c)`` holds the covariates (window means
    of a series, :meth:`EnvCovariates.summary`) standardised over the
    environments that have covariates; constant columns are dropped. A block
    without covariates is unrelated to every other (its row and column are those
    of the identity), so its interaction is learnt from its own records only.

    Parameters
    ----------
    covariates : EnvCovariates
    blocks : array-like
        ``(E,)`` block ids, the order of the kernel.
    n_windows : int
        Windows a daily series is averaged over.

    Returns
    -------
    ndarray
        ``(E, E)`` float64, positive semi-definite, mean diagonal 1 over the
        blocks with covariates.

    Examples
    --------
    >>> cov = EnvCovariates(np.arange(3), ["x"], np.array([[[1.0]], [[2.0]], [[3.0]]]))
    >>> environment_kernel(cov, [0, 2, 5]).round(2)
    array([[ 1.5, -1.5,  0. ],
           [-1.5,  1.5,  0. ],
           [ 0. ,  0. ,  1. ]])
    """
    blocks = np.asarray(blocks)
    rows = covariates.index_of(blocks)
    features = covariates.summary(n_windows)
    sd = features.std(0)
    w = (features[:, sd > 0] - features[:, sd > 0].mean(0)) / sd[sd > 0]
    kernel = np.eye(len(blocks))
    known = rows >= 0
    if w.shape[1]:
        wk = w[rows[known]]
        kernel[np.ix_(known, known)] = wk @ wk.T / w.shape[1]
    return kernel


class ReactionNorm:
    """Reaction-norm GBLUP (Jarquín et al. 2014) fitted on every environment at once.

    ``y_ij = mu_j + g_i + ge_ij + e_ij`` with environment means ``mu_j`` fixed,
    ``g ~ N(0, s2g G)`` and, over records, ``ge ~ N(0, s2ge G o Omega)`` (``o`` the
    element-wise product, ``Omega`` :func:`environment_kernel`), ``e ~ N(0, s2e
    I)``. ``interaction=False`` drops ``ge``: main-effect GBLUP across
    environments. Variance components are REML estimates (Nelder-Mead over the two
    log ratios to ``s2e``, which is profiled out). When the training records fill
    an individuals x environments grid once, the covariance is ``(s2g J + s2ge
    Omega) (x) G + s2e I`` and two small eigendecompositions replace the one of
    the records' covariance; other designs take the dense path (``O(n^3)``).

    Predictions for an environment without training records use its covariates
    (through ``Omega``) and the mean of the training environments' means.

    Parameters
    ----------
    relationship : Kernel, optional
        :meth:`Kernel.relationship` of all genotypes.
    environment : ndarray, optional
        ``(E, E)`` environment kernel over ``blocks``; needed with interaction.
    blocks : array-like, optional
        Block ids of ``environment``'s rows (default ``0..E-1``).
    interaction : bool
        Fit the genotype-by-environment term.
    """

    def __init__(
        self,
        relationship: Kernel | None = None,
        environment: np.ndarray | None = None,
        blocks=None,
        interaction: bool = True,
    ):
        if interaction and environment is None:
            raise ValueError("the interaction term needs an environment kernel")
        self.relationship = relationship
        self.environment = None if environment is None else np.asarray(environment)
        if blocks is None and environment is not None:
            blocks = np.arange(len(environment))
        self.blocks = None if blocks is None else np.asarray(blocks, dtype=np.int64)
        self.interaction = interaction

    def _block_rows(self, blocks) -> np.ndarray:
        blocks = np.asarray(blocks, dtype=np.int64)
        if self.blocks is None:  # main effects only: any block is fine
            return blocks
        lookup = {int(b): i for i, b in enumerate(self.blocks.tolist())}
        unknown = [int(b) for b in blocks if int(b) not in lookup]
        if unknown:
            raise KeyError(f"block(s) {sorted(set(unknown))[:3]} have no kernel row")
        return np.array([lookup[int(b)] for b in blocks], dtype=np.int64)

    def fit(self, records: pd.DataFrame, genotypes: Genotypes | None) -> ReactionNorm:
        """Fit on ``records`` (``name``, ``response``, ``block``); returns ``self``."""
        names, y = _records(records)
        kernel = self.relationship
        if kernel is None:
            if genotypes is None:
                raise ValueError("pass genotypes or a precomputed relationship")
            kernel = Kernel.relationship(genotypes)
        self.kernel_ = kernel
        individuals = kernel.index_of(names)
        envs = self._block_rows(records["block"].to_numpy())
        env_ids, env_of = np.unique(envs, return_inverse=True)
        omega = self.environment[np.ix_(env_ids, env_ids)] if self.interaction else None
        grid = _grid(individuals, env_of, len(env_ids))
        if grid is not None:
            ind_ids, table = grid
            fit = _kronecker_reml(
                y[table], kernel.matrix[np.ix_(ind_ids, ind_ids)], omega
            )
            individuals = np.repeat(ind_ids, len(env_ids))
            env_of = np.tile(np.arange(len(env_ids)), len(ind_ids))
            y = y[table].ravel()
        else:
            fit = _dense_reml(y, kernel.matrix, individuals, env_of, omega)
        self.s2g_, self.s2ge_, self.s2e_, self.log_likelihood_ = fit[:4]
        weights = fit[4]  # (n,) V^-1 (y - X b), records in the order of y
        g_records = kernel.matrix[:, individuals]  # (N, n)
        self.main_ = self.s2g_ * (g_records @ weights)  # (N,)
        self.interaction_ = None
        if self.interaction:
            # (N, E): sum_r G[k, i_r] Omega[j, j_r] w_r
            by_env = np.zeros((len(weights), len(env_ids)))
            by_env[np.arange(len(weights)), env_of] = weights
            self.interaction_ = self.s2ge_ * (
                g_records @ by_env @ self.environment[:, env_ids].T
            )
        fitted = self.main_[individuals] + self.s2e_ * weights
        if self.interaction:
            fitted += self.interaction_[individuals, env_ids[env_of]]
        residual_mean = y - fitted  # X b, constant within an environment
        self.env_ids_ = env_ids
        self.means_ = np.array(
            [residual_mean[env_of == e].mean() for e in range(len(env_ids))]
        )
        return self

    def predict(self, names, blocks) -> np.ndarray:
        """Environment mean + BLUP of ``g + ge`` per (name, block), ``(k,)`` float64."""
        rows = self.kernel_.index_of(names)
        envs = self._block_rows(blocks)
        mean = dict(zip(self.env_ids_.tolist(), self.means_.tolist(), strict=True))
        default = float(self.means_.mean())
        out = self.main_[rows] + np.array([mean.get(int(e), default) for e in envs])
        if self.interaction:
            out = out + self.interaction_[rows, envs]
        return out


def _grid(individuals: np.ndarray, envs: np.ndarray, n_envs: int):
    """``(individual ids (n,), record index (n, E))`` when the records fill an
    individuals x environments grid exactly once, else None."""
    ind_ids, ind_of = np.unique(individuals, return_inverse=True)
    if len(individuals) != len(ind_ids) * n_envs:
        return None
    table = np.full((len(ind_ids), n_envs), -1)
    table[ind_of, envs] = np.arange(len(individuals))
    return (ind_ids, table) if (table >= 0).all() else None


def _ratios(values: np.ndarray) -> np.ndarray:
    return np.exp(np.clip(values, *LOG_DELTA_BOUNDS))


def _best_ratios(objective, interaction: bool) -> np.ndarray:
    """Minimise ``objective(log s2g/s2e, log s2ge/s2e)`` from a few starts."""
    if not interaction:
        result = optimize.minimize_scalar(
            lambda x: objective(np.array([x, -np.inf])),
            bounds=LOG_DELTA_BOUNDS,
            method="bounded",
        )
        return np.array([result.x, -np.inf])
    best = None
    for start in ([0.0, 0.0], [0.0, -2.0], [-2.0, 0.0]):
        result = optimize.minimize(
            objective, start, method="Nelder-Mead", options={"xatol": 1e-4}
        )
        if best is None or result.fun < best.fun:
            best = result
    return best.x


def _kronecker_reml(y: np.ndarray, g: np.ndarray, omega: np.ndarray | None):
    """REML for a complete grid ``y`` ``(n, E)`` (individuals x environments).

    Returns ``(s2g, s2ge, s2e, log_likelihood, weights (n * E,))`` with
    ``weights = V^-1 (y - X b)`` in row-major grid order.
    """
    n, m = y.shape
    # contrasts orthogonal to each environment's mean: K = I_E (x) Q, Q' 1 = 0
    q = linalg.null_space(np.ones((1, n)))  # (n, n - 1)
    d_g, u_g = linalg.eigh(q.T @ g @ q)
    d_g = np.maximum(d_g, 0.0)
    y1 = u_g.T @ (q.T @ y)  # (n - 1, E)
    ones = np.ones((m, m))

    def parts(log_ratios):
        tau_g, tau_ge = _ratios(log_ratios)
        a = tau_g * ones + (0.0 if omega is None else tau_ge * omega)
        d_a, u_a = linalg.eigh(a)
        scaled = d_g[:, None] * np.maximum(d_a, 0.0)[None, :] + 1.0  # V / s2e
        z = y1 @ u_a
        return scaled, z, u_a

    def objective(log_ratios):
        scaled, z, _ = parts(log_ratios)
        s2e = (z**2 / scaled).sum() / z.size
        return 0.5 * (z.size * np.log(s2e) + np.log(scaled).sum())

    log_ratios = _best_ratios(objective, omega is not None)
    scaled, z, u_a = parts(log_ratios)
    s2e = float((z**2 / scaled).sum() / z.size)
    weights = q @ (u_g @ (z / (s2e * scaled)) @ u_a.T)  # (n, E)
    tau_g, tau_ge = _ratios(log_ratios)
    loglik = -float(objective(log_ratios)) - 0.5 * z.size
    s2ge = 0.0 if omega is None else s2e * tau_ge
    return s2e * tau_g, s2ge, s2e, loglik, weights.ravel()


def _dense_reml(
    y: np.ndarray,
    g: np.ndarray,
    individuals: np.ndarray,
    envs: np.ndarray,
    omega: np.ndarray | None,
):
    """REML on the records' covariance, any design; returns as
    :func:`_kronecker_reml` with ``weights`` in record order."""
    g_rr = g[np.ix_(individuals, individuals)]
    ge_rr = None if omega is None else g_rr * omega[np.ix_(envs, envs)]
    x = np.zeros((len(y), envs.max() + 1))
    x[np.arange(len(y)), envs] = 1.0
    k = linalg.null_space(x.T)  # (n, n - E) contrasts
    ky = k.T @ y
    kgk = k.T @ g_rr @ k
    kgek = None if ge_rr is None else k.T @ ge_rr @ k

    def factor(log_ratios):
        tau_g, tau_ge = _ratios(log_ratios)
        h = tau_g * kgk + (0.0 if kgek is None else tau_ge * kgek)
        h[np.diag_indices_from(h)] += 1.0
        return linalg.cho_factor(h)

    def objective(log_ratios):
        c = factor(log_ratios)
        s2e = ky @ linalg.cho_solve(c, ky) / len(ky)
        return 0.5 * (len(ky) * np.log(s2e) + 2 * np.log(np.diag(c[0])).sum())

    log_ratios = _best_ratios(objective, omega is not None)
    c = factor(log_ratios)
    s2e = float(ky @ linalg.cho_solve(c, ky) / len(ky))
    weights = k @ linalg.cho_solve(c, ky) / s2e
    tau_g, tau_ge = _ratios(log_ratios)
    loglik = -float(objective(log_ratios)) - 0.5 * len(ky)
    s2ge = 0.0 if omega is None else s2e * tau_ge
    return s2e * tau_g, s2ge, s2e, loglik, weights
