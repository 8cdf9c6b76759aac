"""Reaction-norm GBLUP for many records: variance components from a composite
likelihood over groups of individuals, then one exact BLUP solve on every record.

The model is :mod:`.environment_reml`'s: ``V / s2e = H = I + tau_g A + tau_ge B``
over the n records, ``A = Z G Z'``, ``B = A o Omega_rr``. Its exact likelihood
needs an ``O(n^3)`` factor of an ``n x n`` matrix per step of the search (``B`` has
full rank), too slow for ~10,000 records. Here:

1. **Variance components** (the approximation): the individuals are split at
   random (a fixed seed) into groups of about ``group_records`` records, every
   record of an individual in its group. The groups are treated as independent,
   each with its own fixed effects (``X``'s columns within the group), with common
   ``(s2g, s2ge, s2e)``: the composite restricted log-likelihood

       l_c = -(M log(sum_g y_g' P_g y_g / M) + sum_g log|K_g' H_g K_g| + M) / 2,

   ``M = sum_g m_g``, is the exact REML likelihood of ``H`` with the relationships
   between individuals of different groups set to zero (and fixed effects nested in
   the groups). It is maximised as :func:`.environment_reml.interaction_reml`
   maximises ``l`` (exact ``tau_g`` at each step of a search over ``tau_ge``), each
   step costing one factor per group: ``O(n group_records^2)`` in all instead of
   ``O(n^3)``. Every record informs the estimates; what is lost is the information
   in the relationships across groups (an unbiased estimating equation, less
   efficient than REML). On the 10,350 training records of a cv0 fold of
   ``benchmarks/environments_scale.py`` (11 groups) the predictions correlated
   >= 0.9995 with exact REML's and r per environment moved by <= 0.003 (6 folds;
   BENCHMARKS.md, *At scale*). ``ReactionNorm.log_likelihood_`` is then ``l_c``.
2. **BLUP** (exact given the components): ``V^-1 (y - X b)`` on all records by
   conjugate gradients on ``K' H K`` (``K`` orthogonal to ``X``; the projected
   system gives the GLS ``b`` without solving for it), each product ``H v`` from
   the individuals x environments grid: ``v + (G (V M))[cells]`` with ``M = tau_g J
   + tau_ge Omega`` ``(E, E)`` and ``V`` ``(k, E)`` the records' values summed per
   cell, ``O(k^2 E)``.

Shape letters: n records, k individuals with a record, E environments, p = rank X.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from .environment_reml import (
    InteractionREML,
    Profile,
    _maximise,
    _ratios_to_components,
    _search,
    main_effect_profile,
    orthonormal_basis,
)
from .mixed_model import LOG_DELTA_BOUNDS

# Records per group of the composite likelihood. Each search step costs about
# n * GROUP_RECORDS^2 / 3 flops (one Cholesky factor per group). On the 10,350
# training records of benchmarks/environments_scale.py a cv0 fold took 1.9, 3.1
# and 5.5 CPU-s with groups of 500, 1,000 and 1,500 records; on its first 3 folds
# each size's predictions correlated >= 0.9993 with exact REML's (BENCHMARKS.md).
GROUP_RECORDS = 1000
GROUP_SEED = 20  # the partition of the individuals into groups is reproducible
CG_TOLERANCE = 1e-8  # relative residual of the BLUP solve
CG_MAX_ITERATIONS = 2000


def record_groups(individuals: np.ndarray, group_records: int, seed=GROUP_SEED):
    """Record indices ``[(n_g,), ...]`` of ``ceil(n / group_records)`` groups of
    individuals: the individuals in random order, each group filled with whole
    individuals (all their records) to about ``n / groups`` records."""
    n = len(individuals)
    n_groups = max(1, int(np.ceil(n / group_records)))
    ids, of = np.unique(individuals, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(ids))
    counts = np.bincount(of, minlength=len(ids))[order]
    ends = np.cumsum(counts)
    # the group of each individual (in permuted order): by its first record's rank
    group_of = np.empty(len(ids), dtype=np.int64)
    group_of[order] = np.minimum((ends - counts) * n_groups // n, n_groups - 1)
    labels = group_of[of]
    groups = [np.flatnonzero(labels == g) for g in range(n_groups)]
    return [rows for rows in groups if len(rows)]  # none empty (a busy individual)


class CompositeProfile:
    """``l_c`` along ``tau_g`` from one :class:`Profile` per group (common
    ``s2e``)."""

    def __init__(self, profiles: list[Profile]):
        self.profiles = profiles
        self.m = sum(p.m for p in profiles)

    def totals(self, log_tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(sum y' P y, sum log|K' H K|)`` at each ``log_tau`` ``(G,)``."""
        parts = [p.totals(log_tau) for p in self.profiles]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def log_likelihood(self, log_tau) -> np.ndarray:
        """``l_c`` at each ``log_tau`` ``(G,)``."""
        ypy, log_det = self.totals(np.atleast_1d(np.asarray(log_tau, dtype=float)))
        return -0.5 * (self.m * np.log(ypy / self.m) + log_det + self.m)

    def best(self) -> tuple[float, float]:
        """``(log tau, l_c)`` of highest ``l_c`` over ``LOG_DELTA_BOUNDS``."""
        log_tau = _maximise(self.log_likelihood, LOG_DELTA_BOUNDS)
        return log_tau, float(self.log_likelihood(log_tau)[0])

    def s2e(self, log_tau: float) -> float:
        """The common ``s2e = sum y' P y / M`` at ``log_tau``."""
        return float(self.totals(np.array([log_tau]))[0][0] / self.m)


class CompositeREML:
    """The composite likelihood ``l_c`` of the reaction-norm model over record
    groups (:func:`record_groups`); arguments as :class:`InteractionREML`."""

    def __init__(self, y, g, individuals, envs, omega, x, group_records):
        self.groups = record_groups(individuals, group_records)
        self.models = [
            InteractionREML(y[r], g, individuals[r], envs[r], omega, x[r])
            for r in self.groups
        ]

    def main_effect_start(self) -> float:
        """Best ``log tau_g`` of the main-effect model (``tau_ge = 0``)."""
        profiles = [main_effect_profile(m.factor, m.xo, m.y) for m in self.models]
        return CompositeProfile(profiles).best()[0]

    def profile(self, log_tau_ge: float) -> CompositeProfile:
        """``l_c`` along ``tau_g`` at this ``tau_ge``."""
        return CompositeProfile([m.profile(log_tau_ge)[0] for m in self.models])

    def log_likelihood(self, log_tau_g: float, log_tau_ge: float) -> float:
        """``l_c`` at these log ratios."""
        return float(self.profile(log_tau_ge).log_likelihood(log_tau_g)[0])

    def evaluate(self, log_tau_ge: float) -> dict:
        """The best ``tau_g`` at ``tau_ge``: ``l_c``, log ratios and ``s2e``."""
        profile = self.profile(log_tau_ge)
        log_tau_g, loglik = profile.best()
        return {
            "log_likelihood": loglik,
            "log_tau_g": log_tau_g,
            "log_tau_ge": float(log_tau_ge),
            "s2e": profile.s2e(log_tau_g),
        }


class RecordCovariance:
    """``H = I + (Z G Z') o (Z_e M Z_e')`` as a product, ``M = tau_g J + tau_ge
    Omega`` ``(E, E)``: ``H v = v + (G_kk (V M))[cells]``, ``V`` ``(k, E, c)`` the
    values of ``v`` ``(n, c)`` summed per individual x environment cell."""

    def __init__(self, g, individuals, envs, omega, tau_g: float, tau_ge: float):
        ids, of = np.unique(individuals, return_inverse=True)
        self.g = np.ascontiguousarray(g[np.ix_(ids, ids)])  # (k, k)
        self.n_envs = omega.shape[0]
        self.cells = of * self.n_envs + envs  # (n,) row of the (k E) grid
        self.m = tau_g + tau_ge * omega  # (E, E)
        # diagonal of H, for the Jacobi preconditioner
        self.diagonal = 1.0 + np.diag(self.g)[of] * self.m[envs, envs]

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """``H v`` for ``v`` ``(n, c)``."""
        k, e, c = len(self.g), self.n_envs, v.shape[1]
        grid = np.zeros((k * e, c))
        np.add.at(grid, self.cells, v)
        grid = np.einsum("kfc,fe->kec", grid.reshape(k, e, c), self.m)
        product = (self.g @ grid.reshape(k, e * c)).reshape(k * e, c)
        return v + product[self.cells]


def projected_cg(operator, diagonal, xo, rhs):
    """``K (K' H K)^-1 K' rhs`` ``(n, c)`` for ``rhs`` ``(n, c)``, ``K`` an
    orthonormal basis of the complement of ``xo`` ``(n, p)``: Jacobi-preconditioned
    conjugate gradients on ``Q H Q``, ``Q = I - xo xo'``, to a relative residual of
    ``CG_TOLERANCE``. This is ``P rhs`` with ``P = H^-1 - H^-1 X (X' H^-1 X)^-1 X'
    H^-1``."""

    def project(v):
        return v - xo @ (xo.T @ v)

    b = project(rhs)
    solution, residual = np.zeros_like(b), b.copy()
    z = project(residual / diagonal[:, None])
    direction, rz = z.copy(), (residual * z).sum(0)
    target = CG_TOLERANCE * np.linalg.norm(b, axis=0)
    for _ in range(CG_MAX_ITERATIONS):
        if (np.linalg.norm(residual, axis=0) <= target).all():
            return solution
        product = project(operator(direction))
        step = rz / (direction * product).sum(0)
        solution += step * direction
        residual -= step * product
        z = project(residual / diagonal[:, None])
        rz, previous = (residual * z).sum(0), rz
        direction = z + (rz / previous) * direction
    raise np.linalg.LinAlgError(
        f"conjugate gradients did not converge in {CG_MAX_ITERATIONS} iterations"
    )


def blup_weights(y, g, individuals, envs, omega, x, s2g, s2ge, s2e) -> np.ndarray:
    """``V^-1 (y - X b)`` ``(n,)`` on all records at these components (by
    :func:`projected_cg`; a dense ``O(n^3)`` solve if it does not converge)."""
    operator = RecordCovariance(g, individuals, envs, omega, s2g / s2e, s2ge / s2e)
    xo = orthonormal_basis(x)
    try:
        return projected_cg(operator, operator.diagonal, xo, y[:, None])[:, 0] / s2e
    except np.linalg.LinAlgError:
        return _dense_projected_solve(operator(np.eye(len(y))), xo, y) / s2e


def _dense_projected_solve(h: np.ndarray, xo: np.ndarray, y: np.ndarray):
    """``P y`` from the ``(n, n)`` matrix ``h``: ``H^-1 (y - X b)``, GLS ``b``."""
    factor = linalg.cho_factor(h, overwrite_a=True)
    solved = linalg.cho_solve(factor, np.column_stack([y, xo]))
    hy, hx = solved[:, 0], solved[:, 1:]
    return hy - hx @ np.linalg.solve(xo.T @ hx, xo.T @ hy)


def composite_reml(y, g, individuals, envs, omega, x, group_records=GROUP_RECORDS):
    """The reaction-norm fit of :func:`.environment_reml.interaction_reml` with
    the components maximising ``l_c`` (:class:`CompositeREML`): returns ``(s2g,
    s2ge, s2e, l_c, weights (n,))``, ``weights = V^-1 (y - X b)`` on all records."""
    y = np.asarray(y, dtype=np.float64)
    model = CompositeREML(y, g, individuals, envs, omega, x, group_records)
    best = _search(model.evaluate, model.main_effect_start())
    components = _ratios_to_components(
        best["s2e"], best["log_tau_g"], best["log_tau_ge"]
    )
    weights = blup_weights(y, g, individuals, envs, omega, x, *components)
    return (*components, best["log_likelihood"], weights)
