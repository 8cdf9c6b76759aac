"""The records-space REML of reaction-norm GBLUP that the package used before it
worked in the individuals' space: the reference its likelihood, variance
components and predictions are tested against (``O(n^3)`` per evaluation)."""

import numpy as np
from scipy import linalg

from gperceiver.baselines.reaction_norm import _best_ratios, _ratios


def dense_design(envs, extra=None):
    """Environment indicators ``(n, E)``, then ``extra`` columns."""
    x = np.zeros((len(envs), envs.max() + 1))
    x[np.arange(len(envs)), envs] = 1.0
    if extra is not None and extra.shape[1]:
        x = np.concatenate([x, extra], axis=1)
    return x


def dense_objective(y, g, individuals, envs, omega, extra=None):
    """``-l`` as a function of ``(log s2g/s2e, log s2ge/s2e)`` on the records'
    covariance projected orthogonally to ``X`` (``K' H K``, ``K`` from
    ``null_space``), and the pieces to finish a fit."""
    g_rr = g[np.ix_(individuals, individuals)]
    ge_rr = None if omega is None else g_rr * omega[np.ix_(envs, envs)]
    k = linalg.null_space(dense_design(envs, extra).T)  # (n, n - rank X)
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

    return objective, factor, k, ky


def dense_log_likelihood(y, g, individuals, envs, omega, log_ratios, extra=None):
    """``l`` at ``log_ratios`` as the records-space code computed it."""
    objective, _, k, _ = dense_objective(y, g, individuals, envs, omega, extra)
    return -float(objective(np.asarray(log_ratios, dtype=float))) - 0.5 * k.shape[1]


def dense_reml(y, g, individuals, envs, omega, extra=None):
    """REML on the records' covariance, any design: ``(s2g, s2ge, s2e, l,
    weights (n,))`` with ``weights = V^-1 (y - X b)``."""
    objective, factor, k, ky = dense_objective(y, g, individuals, envs, omega, extra)
    log_ratios = _best_ratios(objective, omega is not None)
    c = factor(log_ratios)
    s2e = float(ky @ linalg.cho_solve(c, ky) / len(ky))
    weights = k @ linalg.cho_solve(c, ky) / s2e
    tau_g, tau_ge = _ratios(log_ratios)
    loglik = -float(objective(log_ratios)) - 0.5 * len(ky)
    s2ge = 0.0 if omega is None else s2e * tau_ge
    return s2e * tau_g, s2ge, s2e, loglik, weights
