"""REML for the mixed model ``y = X b + Z g + e`` by the EMMA eigendecomposition.

``g ~ N(0, s2g K)`` over the individuals of a kernel ``K``, ``e ~ N(0, s2e I)``
over records; ``Z`` maps records to individuals, so an individual may have several
records (replicates). BLUPs are returned for every individual of the kernel.

Shape letters: N individuals in the kernel, n records, p fixed effects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from .kernels import DEFAULT_BANDWIDTHS, Kernel, _squared_distances

LOG_DELTA_BOUNDS = (-10.0, 10.0)  # search range of log(s2e / s2g)
N_GRID = 100  # grid points over LOG_DELTA_BOUNDS before Brent refinement


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


def best_bandwidth(
    relationship: np.ndarray,
    y: np.ndarray,
    bandwidths=DEFAULT_BANDWIDTHS,
    covariates: np.ndarray | None = None,
    kernels: dict | None = None,
) -> tuple[float, float, MixedModelFit]:
    """REML RKHS of ``y`` ``(N,)`` (one record per individual of the ``(N, N)``
    ``relationship``, fixed-effect design ``covariates`` ``(N, p)``, default an
    intercept): the bandwidth of highest restricted likelihood, the median squared
    distance among these individuals and the fit.

    ``kernels``: a dict the caller keeps for one ``relationship``; it remembers
    each bandwidth's Gaussian :class:`Kernel` and so its eigendecomposition, which
    another response on the same individuals (another environment) then reuses.
    """
    kernels = {} if kernels is None else kernels
    if "median" not in kernels:
        kernels["d2"], kernels["median"] = _squared_distances(relationship)
    d2, median = kernels["d2"], kernels["median"]
    individuals = np.arange(len(y))
    best = None
    for h in bandwidths:
        if h not in kernels:
            kernels[h] = Kernel(np.exp(-d2 / (h * median)), memory=1)
        fit = reml(y, kernels[h], individuals, covariates)
        if best is None or fit.log_likelihood > best[2].log_likelihood:
            best = (h, median, fit)
    return best
