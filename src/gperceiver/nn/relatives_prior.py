"""A prior-fitted relatives head: one small network, shared by every data set,
that reads summary statistics of each marker window in a context of phenotyped
individuals and sets the window weights, bandwidth and noise ratio of a
Gaussian-kernel regression (in-context genomic prediction, issue 22).

Shape letters: W marker windows, Q query individuals, C context individuals.

Per-data-set window weights (:class:`~gperceiver.nn.relatives.RelativesHead`)
cannot transfer between data sets; this head's parameters can, because they act
on *features* of a window, never on its index: the window's score statistic for
a variance component (how much its local relationship matrix lines up with the
context responses, and with the residuals of REML RKHS), its diversity and how
much it follows genome-wide structure, and a few global summaries (context size,
window count, REML heritability and bandwidth). Every feature is a symmetric
function of the context individuals and the window network is applied to each
window alike and pooled by a mean, so predictions are invariant to the order of
the individuals and of the windows, and defined for any number of either.

At initialisation (zero output layers) the head is REML RKHS exactly: uniform
window weights, the REML bandwidth, noise ratio and intercept.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .relatives import RelativesHead, RelativesStart

N_WINDOW_FEATURES = 6
N_GLOBAL_FEATURES = 7
LIMIT = 2.0  # the bandwidth and noise-ratio corrections stay within exp(+-2)


def _local_relationships(d2_cc: Tensor) -> Tensor:
    """``(W, C, C)`` double-centred ``-d2 / 2``: each window's relationship
    matrix among the context individuals (its rows sum to zero)."""
    row = d2_cc.mean(2, keepdim=True)
    col = d2_cc.mean(1, keepdim=True)
    grand = d2_cc.mean((1, 2), keepdim=True)
    return -0.5 * (d2_cc - row - col + grand)


def _scores(local: Tensor, trace: Tensor, frob: Tensor, v: Tensor) -> Tensor:
    """``(W,)`` standardised score statistics ``v' G_w v``: 0 on average and sd 1
    when ``v`` is white noise (mean ``tr G_w``, variance ``2 tr G_w^2``, here
    relative to ``|v|^2 / C``)."""
    v = v - v.mean()
    quadratic = torch.einsum("i,wij,j->w", v, local, v)
    ratio = quadratic * len(v) / (v @ v).clamp_min(1e-12) / trace
    return torch.asinh((ratio - 1.0) * trace / (math.sqrt(2.0) * frob))


def episode_features(
    d2_cc: Tensor, y: Tensor, start: RelativesStart
) -> tuple[Tensor, Tensor]:
    """Window features ``(W, 6)`` and global features ``(7,)`` of a context.

    ``d2_cc`` ``(W, C, C)`` window distances, ``y`` ``(C,)`` standardised
    context responses, ``start`` REML RKHS on them. Only context responses are
    read (a query's never), and no gradient flows through the features.
    """
    with torch.no_grad():
        d2_cc, y = d2_cc.to(torch.float64), y.to(torch.float64)
        local = _local_relationships(d2_cc)
        trace = local.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-12)
        frob = local.square().sum((1, 2)).sqrt().clamp_min(1e-12)
        rkhs = RelativesHead(len(d2_cc), start, attention=False)
        residual = y - rkhs(d2_cc, y, d2_cc, torch.arange(len(y)))  # LOO
        score = _scores(local, trace, frob, y)
        score_residual = _scores(local, trace, frob, residual)
        total = local.sum(0)
        structure = (local * total).sum((1, 2)) / (frob * total.norm())
        diversity = torch.log(trace / trace.mean())
        window = torch.stack(
            [
                score,
                score - score.mean(),
                score_residual,
                score_residual - score_residual.mean(),
                diversity,
                structure,
            ],
            dim=1,
        )
        size = torch.tensor([math.log(len(y) / 300.0), math.log(len(d2_cc) / 20.0)])
        fit = torch.tensor(
            [1.0 / (1.0 + start.delta), math.log(start.bandwidth)], dtype=y.dtype
        )
        spread = torch.stack(
            [score.mean(), score.std(unbiased=False), structure.mean()]
        )
        return window, torch.cat([size.to(y.dtype), fit, spread])


def _mlp(n_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
    )


class PriorRelativesNet(nn.Module):
    """Window weights and kernel scalars from episode features (float64).

    Parameters
    ----------
    hidden : int
        Width of the window network and the scalar network.
    """

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.hidden = hidden
        self.window_body = _mlp(N_WINDOW_FEATURES + N_GLOBAL_FEATURES, hidden)
        self.window_out = nn.Linear(hidden, 1)
        self.scalar_body = _mlp(N_GLOBAL_FEATURES + hidden, hidden)
        self.scalar_out = nn.Linear(hidden, 2)
        for layer in (self.window_out, self.scalar_out):  # start: REML RKHS
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.double()

    def kernel_settings(self, features: tuple[Tensor, Tensor]):
        """Window weights ``(W,)`` (mean 1) and the log-corrections of the
        bandwidth and noise ratio ``(2,)``."""
        window, overall = features
        x = torch.cat([window, overall.expand(len(window), -1)], dim=1)
        hidden = self.window_body(x)
        weights = torch.softmax(self.window_out(hidden).squeeze(1), 0) * len(window)
        pooled = torch.cat([overall, hidden.mean(0)])
        corrections = LIMIT * torch.tanh(self.scalar_out(self.scalar_body(pooled)))
        return weights, corrections

    def forward(
        self,
        d2_cc: Tensor,
        y: Tensor,
        d2_qc: Tensor,
        start: RelativesStart,
        features: tuple[Tensor, Tensor],
    ) -> Tensor:
        """Predictions ``(Q,)`` of queries outside the context: the Gaussian
        process mean ``mu + K_qc (K_cc + delta I)^-1 (y - mu)`` with
        ``K = exp(-s sum_w a_w d2_w / (h m))``; ``s`` rescales the weighted
        distances to the mean of the unweighted ones over the context.

        ``d2_cc`` ``(W, C, C)``, ``y`` ``(C,)``, ``d2_qc`` ``(W, Q, C)``.
        """
        weights, corrections = self.kernel_settings(features)
        weighted_cc = torch.tensordot(weights, d2_cc, 1)
        weighted_qc = torch.tensordot(weights, d2_qc, 1)
        scale = d2_cc.sum() / weighted_cc.sum().clamp_min(1e-12)
        bandwidth = start.bandwidth * start.median * torch.exp(corrections[0])
        delta = start.delta * torch.exp(corrections[1])
        kernel_cc = torch.exp(-weighted_cc * scale / bandwidth)
        kernel_qc = torch.exp(-weighted_qc * scale / bandwidth)
        h = kernel_cc + delta * torch.eye(len(y), dtype=kernel_cc.dtype)
        factor = torch.linalg.cholesky(h)
        alpha = torch.cholesky_solve((y - start.mean)[:, None], factor)[:, 0]
        return start.mean + kernel_qc @ alpha
