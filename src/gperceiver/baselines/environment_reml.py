"""REML of the multi-environment models for any individuals x environments design,
working in the individuals' space.

The model of :class:`~gperceiver.baselines.ReactionNorm`: ``y = X b + Z g + ge + e``
with ``g ~ N(0, s2g G)``, ``ge ~ N(0, s2ge (Z G Z') o Omega_rr)`` over records and
``e ~ N(0, s2e I)``; ``V / s2e = H = I + tau_g A + tau_ge B`` with ``A = Z G Z'``,
``B = A o Omega_rr``. The restricted log-likelihood (``s2e`` profiled out, without
the ``log |X'X|`` and ``2 pi`` terms) is

    l = -(m log(y' P y / m) + log |H| + log |Xo' H^-1 Xo| + m) / 2,

``Xo`` an orthonormal basis of the columns of ``X``, ``m = n - rank X`` and ``P =
H^-1 - H^-1 Xo (Xo' H^-1 Xo)^-1 Xo' H^-1``: the same function of the ratios as the
records' covariance projected orthogonally to ``X`` gives, ``log |K' H K| = log |H|
+ log |Xo' H^-1 Xo|`` for an orthonormal basis ``K`` of the complement.

``A`` has rank at most k (the individuals with a record): ``A = F F'`` with ``F``
``(n, q)`` from one eigendecomposition of ``D^1/2 G_kk D^1/2`` (``D`` the record
counts), so along ``tau_g`` every quantity of ``l`` comes from ``q``-vectors
(:class:`Profile`). Main-effect GBLUP needs nothing else. With the interaction,
each ``tau_ge`` costs one Cholesky factor ``L`` of ``C = I + tau_ge B`` and the
``q``-space profile of the data whitened by ``L``; ``l`` is maximised over
``log tau_g`` exactly (grid and Brent) inside a bracketed parabolic search over
``log tau_ge`` (:func:`_search`).
``B`` has full rank n in general (each of its ``Omega``'s rank-one parts carries a
rank-``q`` copy of ``A``), so that factor is the one ``O(n^3)`` step left; for
many records :mod:`.environment_composite` estimates the components from groups of
records instead and solves the BLUP iteratively.

Shape letters: n records, k individuals with a record, q <= k the rank of ``A``,
p = rank X.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize

from .mixed_model import LOG_DELTA_BOUNDS, N_GRID

# The search over log(tau_ge) costs one O(n^3) factor per step. It stops when its
# bracket is narrower than 2 OUTER_XTOL or its parabola promises a rise of l under
# OUTER_FTOL: on the tests' designs the ratios then lie within 3e-4 (relative) of
# the records-space optimum found to 1e-9, l within 2e-7 of its maximum.
OUTER_XTOL = 1e-4
OUTER_FTOL = 1e-7
# First step from the start when bracketing the best log(tau_ge).
OUTER_STEP = 1.0


def orthonormal_basis(x: np.ndarray) -> np.ndarray:
    """``(n, rank)`` orthonormal basis of the columns of ``x`` ``(n, p)`` (the
    rank threshold of :func:`scipy.linalg.null_space`)."""
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, s > s.max() * max(x.shape) * np.finfo(float).eps]


@dataclass(frozen=True)
class RecordFactor:
    """``A = Z G Z' = F F'`` with ``F = factor[of]`` ``(n, q)`` and ``F' F =
    diag(values)``.

    ``ids`` ``(k,)`` are the kernel rows with a record, ``of`` ``(n,)`` each
    record's position in ``ids``.
    """

    ids: np.ndarray  # (k,) int
    of: np.ndarray  # (n,) int
    factor: np.ndarray  # (k, q)
    values: np.ndarray  # (q,)

    @classmethod
    def build(cls, g: np.ndarray, individuals: np.ndarray) -> RecordFactor:
        """From the ``(N, N)`` kernel ``g`` and each record's row ``(n,)``."""
        ids, of = np.unique(individuals, return_inverse=True)
        root = np.sqrt(np.bincount(of).astype(np.float64))
        scaled = g[np.ix_(ids, ids)] * root[:, None] * root[None, :]
        values, vectors = linalg.eigh(scaled, driver="evd")
        keep = values > values.max() * len(ids) * np.finfo(float).eps
        values, vectors = values[keep], vectors[:, keep]
        return cls(ids, of, vectors * np.sqrt(values) / root[:, None], values)

    def records(self) -> np.ndarray:
        """``F`` ``(n, q)``."""
        return self.factor[self.of]

    def transpose_times(self, v: np.ndarray) -> np.ndarray:
        """``F' v`` for ``v`` ``(n,)`` or ``(n, c)``, without forming ``F``."""
        summed = np.zeros((len(self.ids), *v.shape[1:]))
        np.add.at(summed, self.of, v)
        return self.factor.T @ summed


def _maximise(function, bounds, xatol: float = 1e-6) -> float:
    """Argmax of a vectorised ``function`` over ``bounds``: grid, then Brent."""
    grid = np.linspace(*bounds, N_GRID + 1)
    on_grid = function(grid)
    best = int(np.argmax(on_grid))
    result = optimize.minimize_scalar(
        lambda x: -float(function(np.array([x]))[0]),
        bounds=(grid[max(best - 1, 0)], grid[min(best + 1, N_GRID)]),
        method="bounded",
        options={"xatol": xatol},
    )
    return float(result.x) if -result.fun >= on_grid[best] else float(grid[best])


class Profile:
    """The restricted log-likelihood along ``tau`` of ``H = C + tau F F'``.

    Built from the data whitened by ``C = L L'`` (``f = L^-1 F``, ``x = L^-1 Xo``,
    ``y = L^-1 y``) rotated to the eigenvectors ``V`` of ``f' f = V diag(values)
    V'``: ``a = V' f' y`` ``(q,)``, ``bx = V' f' x`` ``(q, p)``, and the small
    products ``y' y``, ``x' y`` ``(p,)``, ``x' x`` ``(p, p)``; ``log_det_base =
    log |C|``. By Woodbury, ``H^-1 = L^-T (I - f V diag(w) V' f') L^-1`` with ``w
    = tau / (1 + tau values)``, so each ``tau`` costs ``O(q p^2)``.
    """

    def __init__(self, values, a, bx, yty, xty, xtx, n, log_det_base=0.0):
        self.values, self.a, self.bx = values, a, bx
        # rows bx_i bx_i' flattened (q, p^2): X' H^-1 X for many tau is one product
        self.bx_outer = (bx[:, :, None] * bx[:, None, :]).reshape(len(values), -1)
        self.yty, self.xty, self.xtx = float(yty), xty, xtx
        self.m = n - bx.shape[1]
        self.log_det_base = float(log_det_base)

    def _parts(self, log_tau: np.ndarray):
        tau = np.exp(np.asarray(log_tau, dtype=np.float64))[:, None]  # (G, 1)
        w = tau / (1.0 + tau * self.values)  # (G, q)
        yhy = self.yty - (w * self.a**2).sum(1)
        xhy = self.xty - (w * self.a) @ self.bx  # (G, p)
        xhx = self.xtx - (w @ self.bx_outer).reshape(len(w), *self.xtx.shape)
        factor = np.linalg.cholesky(xhx)  # (G, p, p)
        solved = np.linalg.solve(factor, xhy[..., None])[..., 0]  # (G, p)
        ypy = yhy - (solved**2).sum(1)
        log_det = (
            self.log_det_base
            + np.log1p(tau * self.values).sum(1)
            + 2 * np.log(np.diagonal(factor, axis1=1, axis2=2)).sum(1)
        )
        return w, xhx, xhy, ypy, log_det

    def totals(self, log_tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(y' P y, log |K' H K|)`` at each ``log_tau`` ``(G,)``."""
        return self._parts(np.atleast_1d(log_tau))[3:]

    def log_likelihood(self, log_tau) -> np.ndarray:
        """``l`` at each ``log_tau`` ``(G,)``."""
        ypy, log_det = self.totals(log_tau)
        m = self.m
        return -0.5 * (m * np.log(ypy / m) + log_det + m)

    def best(self) -> tuple[float, float]:
        """``(log tau, l)`` of highest ``l`` over ``LOG_DELTA_BOUNDS``."""
        log_tau = _maximise(self.log_likelihood, LOG_DELTA_BOUNDS)
        return log_tau, float(self.log_likelihood(log_tau)[0])

    def solution(self, log_tau: float) -> tuple[float, np.ndarray, np.ndarray]:
        """``(s2e, b, c)``: ``s2e = y' P y / m``, the GLS ``b`` ``(p,)`` on ``x``
        and ``c`` ``(q,)`` with ``(I + tau f f')^-1 (y - x b) = r - f V c``,
        ``r = y - x b`` (all whitened)."""
        w, xhx, xhy, ypy, _ = self._parts(np.array([log_tau]))
        beta = np.linalg.solve(xhx[0], xhy[0])
        return float(ypy[0] / self.m), beta, w[0] * (self.a - self.bx @ beta)


def main_effect_profile(factor: RecordFactor, xo: np.ndarray, y: np.ndarray):
    """:class:`Profile` of ``H = I + tau_g A`` (``C = I``: ``F' F`` is diagonal)."""
    return Profile(
        factor.values,
        factor.transpose_times(y),
        factor.transpose_times(xo),
        y @ y,
        xo.T @ y,
        xo.T @ xo,
        len(y),
    )


def _ratios_to_components(s2e: float, log_tau_g: float, log_tau_ge: float | None):
    s2ge = 0.0 if log_tau_ge is None else s2e * float(np.exp(log_tau_ge))
    return s2e * float(np.exp(log_tau_g)), s2ge, s2e


def main_effect_reml(y, g, individuals, x):
    """REML of ``H = I + tau_g Z G Z'``; returns ``(s2g, 0, s2e, l, weights (n,))``
    with ``weights = V^-1 (y - X b)``."""
    factor = RecordFactor.build(g, individuals)
    xo = orthonormal_basis(x)
    profile = main_effect_profile(factor, xo, y)
    log_tau, loglik = profile.best()
    s2e, beta, c = profile.solution(log_tau)
    residual = y - xo @ beta
    weights = (residual - factor.records() @ c) / s2e
    return (*_ratios_to_components(s2e, log_tau, None), loglik, weights)


class InteractionREML:
    """The restricted likelihood of the reaction-norm model, any design.

    Parameters
    ----------
    y : ndarray
        ``(n,)`` responses.
    g : ndarray
        ``(N, N)`` kernel over individuals.
    individuals, envs : ndarray
        ``(n,)`` kernel row and environment (row of ``omega``) of each record.
    omega : ndarray
        ``(E, E)`` environment kernel.
    x : ndarray
        ``(n, p)`` fixed-effect design.
    """

    def __init__(self, y, g, individuals, envs, omega, x):
        self.y = np.asarray(y, dtype=np.float64)
        self.factor = RecordFactor.build(g, individuals)
        self.xo = orthonormal_basis(x)
        # B = A o Omega_rr, filled row block by row block (no second n x n temporary)
        n = len(self.y)
        self.b = np.empty((n, n))
        for start in range(0, n, 1024):
            rows = slice(start, start + 1024)
            self.b[rows] = g[np.ix_(individuals[rows], individuals)]
            self.b[rows] *= omega[np.ix_(envs[rows], envs)]
        self.rhs = np.asfortranarray(
            np.column_stack([self.factor.records(), self.xo, self.y])
        )

    def profile(self, log_tau_ge: float):
        """``(Profile along tau_g at this tau_ge, Cholesky factor L, whitened f,
        eigenvectors V, whitened (x, y))``."""
        c = self.b.T * np.exp(log_tau_ge)  # B is symmetric: Fortran order for LAPACK
        c[np.diag_indices_from(c)] += 1.0
        lower, info = linalg.lapack.dpotrf(c, lower=1, overwrite_a=1, clean=0)
        if info != 0:
            raise np.linalg.LinAlgError("I + tau_ge B is not positive definite")
        white = linalg.solve_triangular(lower, self.rhs, lower=True, check_finite=False)
        q, p = len(self.factor.values), self.xo.shape[1]
        f, xw, yw = white[:, :q], white[:, q : q + p], white[:, q + p]
        values, vectors = linalg.eigh(f.T @ f, driver="evd")
        values = np.maximum(values, 0.0)
        profile = Profile(
            values,
            vectors.T @ (f.T @ yw),
            vectors.T @ (f.T @ xw),
            yw @ yw,
            xw.T @ yw,
            xw.T @ xw,
            len(self.y),
            2 * np.log(np.diag(lower)).sum(),
        )
        return profile, lower, f, vectors, (xw, yw)

    def log_likelihood(self, log_tau_g: float, log_tau_ge: float) -> float:
        """``l`` at these log ratios (the test of this module's algebra)."""
        return float(self.profile(log_tau_ge)[0].log_likelihood(log_tau_g)[0])

    def evaluate(self, log_tau_ge: float) -> dict:
        """The best ``tau_g`` at ``tau_ge``: ``l``, log ratios, ``s2e`` and the
        weights ``V^-1 (y - X b)`` ``(n,)``."""
        profile, lower, f, vectors, (xw, yw) = self.profile(log_tau_ge)
        log_tau_g, loglik = profile.best()
        s2e, beta, c = profile.solution(log_tau_g)
        whitened = yw - xw @ beta - f @ (vectors @ c)
        weights = linalg.solve_triangular(
            lower, whitened, lower=True, trans="T", check_finite=False
        )
        return {
            "log_likelihood": loglik,
            "log_tau_g": log_tau_g,
            "log_tau_ge": float(log_tau_ge),
            "s2e": s2e,
            "weights": weights / s2e,
        }


GOLDEN = 1.618034  # bracket growth per step, as in scipy.optimize.bracket
SHRINK = 0.381966  # golden-section step, 2 - GOLDEN


def _vertex(a, fa, b, fb, c, fc) -> tuple[float, float] | None:
    """Minimum ``(u, f(u))`` of the parabola through three points, or None."""
    q = (b - a) * (fb - fc) - (b - c) * (fb - fa)
    if q >= 0:  # not convex (q < 0 when b is below a and c)
        return None
    u = b - 0.5 * ((b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)) / q
    lagrange = (
        fa * (u - b) * (u - c) / ((a - b) * (a - c))
        + fb * (u - a) * (u - c) / ((b - a) * (b - c))
        + fc * (u - a) * (u - b) / ((c - a) * (c - b))
    )
    return u, lagrange


def _refine(cost, a, b, c) -> None:
    """Shrink the bracket ``a < b < c`` (``cost(b)`` lowest) by parabolic steps,
    golden-section ones where a parabola does not help, until it is narrower
    than ``2 OUTER_XTOL`` or the parabola promises less than ``OUTER_FTOL`` after
    a step that gained less than ten times that."""
    fa, fb, fc = cost(a), cost(b), cost(c)
    steps = [np.inf, np.inf]  # the last two steps' sizes
    gain = np.inf  # what the last step lowered the cost by
    for _ in range(40):
        if c - a <= 2 * OUTER_XTOL:
            return
        vertex = _vertex(a, fa, b, fb, c, fc)
        # Brent's safeguard: a parabolic step inside and under half the one before
        parabolic = (
            vertex is not None
            and a < vertex[0] < c
            and abs(vertex[0] - b) < steps[0] / 2
        )
        if parabolic and fb - vertex[1] < OUTER_FTOL and gain < 10 * OUTER_FTOL:
            return
        if parabolic:
            u = vertex[0]
            if abs(u - b) < OUTER_XTOL / 2:  # too close to b to tell them apart
                u = b + np.copysign(OUTER_XTOL / 2, u - b)
        else:
            u = b + SHRINK * ((c - b) if c - b > b - a else (a - b))
        steps = [steps[1], abs(u - b)]
        fu = cost(u)
        gain = max(fb - fu, 0.0)
        if fu < fb:
            a, fa, c, fc = (a, fa, b, fb) if u < b else (b, fb, c, fc)
            b, fb = u, fu
        elif u < b:
            a, fa = u, fu
        else:
            c, fc = u, fu


def _search(evaluate, start: float) -> dict:
    """The ``evaluate(log_tau_ge)`` of highest ``log_likelihood``: a bracket
    grown from ``start``, then :func:`_refine` (each point evaluated once)."""
    lo, hi = LOG_DELTA_BOUNDS
    seen: dict[float, dict] = {}

    def cost(x) -> float:
        x = round(float(np.clip(x, lo, hi)), 9)
        if x not in seen:
            seen[x] = evaluate(x)
        return -seen[x]["log_likelihood"]

    a = float(np.clip(start, lo, hi))
    b = a + OUTER_STEP if a + OUTER_STEP <= hi else a - OUTER_STEP
    if cost(b) > cost(a):
        a, b = b, a
    c = float(np.clip(b + GOLDEN * (b - a), lo, hi))
    while cost(c) < cost(b) and c not in (lo, hi):
        a, b, c = b, c, float(np.clip(c + GOLDEN * (c - b), lo, hi))
    if cost(c) < cost(b):  # still falling at a bound: the best is there, or near
        a, b = b, c - SHRINK * (c - b)
        if cost(b) > cost(c):  # falling all the way: the bound is best
            return seen[min(seen, key=cost)]
    left, right = sorted((a, c))
    _refine(cost, left, b, right)
    return seen[min(seen, key=cost)]


def interaction_reml(y, g, individuals, envs, omega, x):
    """REML of the reaction-norm model (:class:`InteractionREML`), started at
    ``tau_ge = tau_g`` of main-effect GBLUP; returns ``(s2g, s2ge, s2e, l,
    weights (n,))`` with ``weights = V^-1 (y - X b)``."""
    model = InteractionREML(y, g, individuals, envs, omega, x)
    start = main_effect_profile(model.factor, model.xo, model.y).best()[0]
    best = _search(model.evaluate, start)
    components = _ratios_to_components(
        best["s2e"], best["log_tau_g"], best["log_tau_ge"]
    )
    return (*components, best["log_likelihood"], best["weights"])
