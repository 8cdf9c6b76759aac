"""Reaction-norm GBLUP (Jarquín et al. 2014): genotype-by-environment interaction
through a kernel between environments built from their covariates.

Shape letters: N individuals, n records, E environments.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import linalg, optimize

from ..data import EnvCovariates, Genotypes
from .environment_composite import GROUP_RECORDS, composite_reml
from .environment_reml import interaction_reml, main_effect_reml
from .estimators import _records
from .fixed_effects import NO_FIXED, FixedDesign, FixedEffects
from .kernels import Kernel
from .mixed_model import LOG_DELTA_BOUNDS


def environment_kernel(
    covariates: EnvCovariates, environments, n_windows: int = 6
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
    environments = np.asarray(environments)
    rows = covariates.index_of(environments)
    features = covariates.summary(n_windows)
    sd = features.std(0)
    w = (features[:, sd > 0] - features[:, sd > 0].mean(0)) / sd[sd > 0]
    kernel = np.eye(len(environments))
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
    environments. Variance components are REML estimates, ``s2e`` profiled out.
    When the training records fill an individuals x environments grid once, the
    covariance is ``(s2g J + s2ge Omega) (x) G + s2e I`` and two small
    eigendecompositions give the likelihood (Nelder-Mead over the two log ratios
    to ``s2e``). Other designs (an incomplete grid, replicates, other fixed
    effects) work in the individuals' space (:mod:`.environment_reml`): main
    effects from one eigendecomposition of the records' ``G``; with the
    interaction, one Cholesky factor of the records' covariance per step of a
    Brent search over ``log(s2ge / s2e)``, the best ``s2g / s2e`` found exactly
    at each step. With more than ``reml_group_records`` records (and the
    interaction) that exact fit costs ``O(n^3)`` per step; instead the components
    maximise a composite likelihood over groups of about ``reml_group_records``
    records (whole individuals, relationships across groups ignored; an
    approximation, :mod:`.environment_composite`), then the BLUP is solved
    exactly on all records at those components (conjugate gradients).

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
    fixed : FixedEffects
        Record columns fitted as fixed effects beside the environment means (one
        effect per level over all environments).
    reml_group_records : int or None
        Records per group of the composite likelihood used above that many
        records (default :data:`.environment_composite.GROUP_RECORDS`); None or 0:
        exact REML on every record whatever their number.
    """

    def __init__(
        self,
        relationship: Kernel | None = None,
        environment: np.ndarray | None = None,
        environments=None,
        interaction: bool = True,
        fixed: FixedEffects = NO_FIXED,
        reml_group_records: int | None = GROUP_RECORDS,
    ):
        if interaction and environment is None:
            raise ValueError("the interaction term needs an environment kernel")
        self.relationship = relationship
        self.environment = None if environment is None else np.asarray(environment)
        if environments is None and environment is not None:
            environments = np.arange(len(environment))
        self.environments = (
            None if environments is None else np.asarray(environments, dtype=np.int64)
        )
        self.interaction = interaction
        self.fixed = fixed
        self.reml_group_records = reml_group_records

    def _block_rows(self, environments) -> np.ndarray:
        environments = np.asarray(environments, dtype=np.int64)
        if self.environments is None:  # main effects only: any block is fine
            return environments
        lookup = {int(b): i for i, b in enumerate(self.environments.tolist())}
        unknown = [int(b) for b in environments if int(b) not in lookup]
        if unknown:
            raise KeyError(f"block(s) {sorted(set(unknown))[:3]} have no kernel row")
        return np.array([lookup[int(b)] for b in environments], dtype=np.int64)

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
        self.design_ = FixedDesign(self.fixed).fit(records)
        extra = self.design_.matrix(records)[:, 1:]  # the means replace the intercept
        grid = None if extra.shape[1] else _grid(individuals, env_of, len(env_ids))
        if grid is not None:
            ind_ids, table = grid
            fit = _kronecker_reml(
                y[table], kernel.matrix[np.ix_(ind_ids, ind_ids)], omega
            )
            individuals = np.repeat(ind_ids, len(env_ids))
            env_of = np.tile(np.arange(len(env_ids)), len(ind_ids))
            y = y[table].ravel()
        elif self.interaction:
            x = _design(env_of, len(env_ids), extra)
            fit = self._interaction_fit(y, kernel.matrix, individuals, env_of, omega, x)
        else:
            x = _design(env_of, len(env_ids), extra)
            fit = main_effect_reml(y, kernel.matrix, individuals, x)
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
        # the solution on the records: u = G[:, i_r] (s2g + s2ge Omega[e, e_r]) w_r
        self.record_weights_, self.record_individuals_ = weights, individuals
        self.record_environments_ = env_ids[env_of]  # rows of ``environment``
        fitted = self.main_[individuals] + self.s2e_ * weights
        if self.interaction:
            fitted += self.interaction_[individuals, env_ids[env_of]]
        self.env_ids_ = env_ids
        x = np.zeros((len(y), len(env_ids)))
        x[np.arange(len(y)), env_of] = 1.0
        if extra.shape[1]:
            x = np.concatenate([x, extra], axis=1)
        beta = np.linalg.lstsq(x, y - fitted, rcond=None)[0]  # exact: y - fitted = X b
        self.means_, self.beta_ = beta[: len(env_ids)], beta[len(env_ids) :]
        return self

    def _interaction_fit(self, y, g, individuals, envs, omega, x):
        """Exact REML up to ``reml_group_records`` records, composite above."""
        group = self.reml_group_records
        if group and len(y) > group:
            return composite_reml(y, g, individuals, envs, omega, x, group)
        return interaction_reml(y, g, individuals, envs, omega, x)

    def predict_parts(self, records: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(fixed, genetic)`` parts ``(k,)`` for ``records`` (``name``, ``block``
        and the fixed-effect columns): environment mean plus the other fixed
        effects, and the BLUP of ``g + ge``."""
        rows = self.kernel_.index_of(records["name"])
        envs = self._block_rows(records["block"].to_numpy())
        mean = dict(zip(self.env_ids_.tolist(), self.means_.tolist(), strict=True))
        default = float(self.means_.mean())
        fixed = np.array([mean.get(int(e), default) for e in envs], dtype=np.float64)
        if len(self.beta_):
            fixed += self.design_.matrix(records)[:, 1:] @ self.beta_
        genetic = self.main_[rows]
        if self.interaction:
            genetic = genetic + self.interaction_[rows, envs]
        return fixed, genetic

    def predict(self, records: pd.DataFrame) -> np.ndarray:
        """Fixed part plus BLUP of ``g + ge`` per record (``name``, ``block``,
        fixed-effect columns), ``(k,)`` float64."""
        fixed, genetic = self.predict_parts(records)
        return fixed + genetic


def _design(envs: np.ndarray, n_envs: int, extra: np.ndarray) -> np.ndarray:
    """``X`` ``(n, E + q)``: environment indicators, then the ``extra`` columns."""
    x = np.zeros((len(envs), n_envs))
    x[np.arange(len(envs)), envs] = 1.0
    return np.concatenate([x, extra], axis=1) if extra.shape[1] else x


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
