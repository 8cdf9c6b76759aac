"""How precise a REML fit is: prediction error variances and reliabilities of the
BLUPs, and the sampling covariance of the fixed effects.

Shape letters: N individuals in the kernel, n records, p fixed effects.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from .kernels import Kernel
from .mixed_model import MixedModelFit


def _as_kernel(kernel) -> Kernel:
    return kernel if isinstance(kernel, Kernel) else Kernel(kernel, memory=0)


def prediction_error_variance(
    fit: MixedModelFit,
    kernel: Kernel | np.ndarray,
    individuals: np.ndarray,
    covariates: np.ndarray,
) -> np.ndarray:
    """``PEV_i = Var(g_i - BLUP_i)`` ``(N,)`` for every individual of the kernel.

    With ``V = s2g (K_rr + delta I)`` and the REML projection
    ``P = V^-1 - V^-1 X (X' V^-1 X)^-1 X' V^-1``, the BLUP is ``K_ir s2g P y``
    and ``PEV = s2g (K_ii - s2g K_ir P K_ri)``: the diagonal of the lower-right
    block of the inverse of Henderson's mixed-model equations times ``s2e``, but
    needing no inverse of ``K`` (which may be singular). ``P`` comes from the EMMA
    eigendecomposition the fit used (``covariates`` is its ``X``, ``(n, p)``).
    """
    kernel = _as_kernel(kernel)
    individuals = np.asarray(individuals, dtype=np.int64)
    spectrum = kernel.spectrum(individuals, np.asarray(covariates, dtype=np.float64))
    projected = kernel.matrix[:, individuals] @ spectrum.vectors  # (N, n - p)
    explained = (projected**2 / (spectrum.values + fit.delta)).sum(1)
    return fit.s2g * np.maximum(np.diag(kernel.matrix) - explained, 0.0)


def reliability(
    fit: MixedModelFit,
    kernel: Kernel | np.ndarray,
    individuals: np.ndarray,
    covariates: np.ndarray,
) -> np.ndarray:
    """``1 - PEV_i / (s2g K_ii)`` ``(N,)``: the squared correlation between true
    and predicted genetic value (``K_ii`` about 1 for VanRaden's G, so about
    ``1 - PEV / s2g``); 0 for an individual with ``K_ii = 0``."""
    kernel = _as_kernel(kernel)
    pev = prediction_error_variance(fit, kernel, individuals, covariates)
    prior = fit.s2g * np.diag(kernel.matrix)
    safe = np.where(prior > 0, prior, 1.0)
    return np.where(prior > 0, 1.0 - pev / safe, 0.0)


def fixed_effect_covariance(
    fit: MixedModelFit,
    kernel: Kernel | np.ndarray,
    individuals: np.ndarray,
    covariates: np.ndarray,
) -> np.ndarray:
    """``(X' V^-1 X)^-1`` ``(p, p)``, the sampling covariance of the GLS fixed
    effects at the fitted variances (a pseudo-inverse when ``X`` is rank
    deficient). Costs a Cholesky factorisation of the records' ``(n, n)``
    covariance."""
    kernel = _as_kernel(kernel)
    individuals = np.asarray(individuals, dtype=np.int64)
    x = np.asarray(covariates, dtype=np.float64)
    h = kernel.matrix[np.ix_(individuals, individuals)].copy()
    h[np.diag_indices_from(h)] += fit.delta
    h_inv_x = linalg.cho_solve(linalg.cho_factor(h), x)
    return fit.s2g * np.linalg.pinv(x.T @ h_inv_x, hermitian=True)
