"""A relatives head: a query individual's prediction read from the phenotyped
individuals of its context (in-context genomic prediction).

Shape letters: W marker windows, Q query individuals, C context individuals
(phenotyped training records, one per individual).

The similarity of two individuals is built per marker window: ``d2[w, q, c]`` is
the squared distance between their centred allele dosages over the window's
markers, divided by the genome-wide denominator of VanRaden's G, so that summed
over windows it is the distance of the RKHS kernel (see
:func:`gperceiver.incontext.window_distances`). Two paths read the context:

- a **learned kernel regression**: ``K = exp(-sum_w a_w d2_w / (h m))`` with
  non-negative window weights ``a`` (``exp`` of a parameter), bandwidth ``h`` and
  the median distance ``m``; the prediction is the Gaussian-process mean
  ``mu + K_qc (K_cc + delta I)^-1 (y - mu)``. With ``a = 1`` and ``h``, ``delta``
  and ``mu`` of a REML fit it *is* RKHS, the starting point of training;
- an **attention correction**: a softmax over the context of
  ``-sum_w b_w d2_w / (t m)`` (other window weights ``b``, temperature ``t``)
  averages the context responses, scaled by ``gamma`` (0 at the start).

A query that is itself in the context (training by leave-one-out) never reads
its own response: the kernel path uses the exact leave-one-out mean
``y_i - [H^-1 (y - mu)]_i / [H^-1]_ii`` (Rasmussen & Williams 2006, eq. 5.12;
``H = K_cc + delta I``), which equals the regression refitted without ``i``, and
the attention masks it out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class RelativesStart:
    """The starting point of a head: a REML RKHS fit on the context records."""

    bandwidth: float  # h, in units of the median distance (RKHS's choice)
    delta: float  # s2e / s2g of the REML fit
    mean: float  # intercept (GLS) of the REML fit
    median: float  # m, the median genome-wide squared distance


class RelativesHead(nn.Module):
    """Predict responses of query individuals from a context of phenotyped ones.

    Parameters
    ----------
    n_windows : int
        ``W``, marker windows of the distances the head reads.
    start : RelativesStart
        REML RKHS values the kernel path starts from.
    attention : bool
        Add the softmax attention correction (off: the kernel path alone).
    """

    def __init__(self, n_windows: int, start: RelativesStart, attention: bool = True):
        super().__init__()
        as64 = torch.float64
        self.register_buffer("median", torch.tensor(start.median, dtype=as64))
        self.log_window = nn.Parameter(torch.zeros(n_windows, dtype=as64))
        self.log_bandwidth = nn.Parameter(
            torch.tensor(math.log(start.bandwidth), dtype=as64)
        )
        self.log_delta = nn.Parameter(torch.tensor(math.log(start.delta), dtype=as64))
        self.mean = nn.Parameter(torch.tensor(start.mean, dtype=as64))
        self.attention = attention
        if attention:
            self.log_attention_window = nn.Parameter(torch.zeros(n_windows, dtype=as64))
            self.log_temperature = nn.Parameter(
                torch.tensor(math.log(start.bandwidth * 0.25), dtype=as64)
            )
            self.gamma = nn.Parameter(torch.zeros((), dtype=as64))

    def window_weights(self) -> Tensor:
        """Non-negative kernel weight of each window ``(W,)``."""
        return self.log_window.exp()

    def _scaled(self, d2: Tensor, log_weights: Tensor, log_scale: Tensor) -> Tensor:
        """``sum_w exp(log_weights_w) d2_w / (exp(log_scale) m)``, ``(..., C)``."""
        flat = log_weights.exp() @ d2.reshape(len(d2), -1)  # a matmul: einsum
        summed = flat.reshape(d2.shape[1:])  # over "w..." is ~20x slower here
        return summed / (log_scale.exp() * self.median)

    def forward(
        self, d2_cc: Tensor, y: Tensor, d2_qc: Tensor, self_index: Tensor
    ) -> Tensor:
        """Predictions ``(Q,)``.

        Parameters
        ----------
        d2_cc : Tensor
            ``(W, C, C)`` window distances among the context individuals.
        y : Tensor
            ``(C,)`` context responses.
        d2_qc : Tensor
            ``(W, Q, C)`` window distances from each query to the context.
        self_index : Tensor
            ``(Q,)`` int64: the context position of each query, or -1 for a query
            outside the context. A query is never predicted from its own response.
        """
        y = y.to(torch.float64)
        kernel_cc = torch.exp(-self._scaled(d2_cc, self.log_window, self.log_bandwidth))
        h = kernel_cc + self.log_delta.exp() * torch.eye(len(y), dtype=y.dtype)
        factor = torch.linalg.cholesky(h)
        inside = self_index >= 0
        if inside.any():  # leave-one-out needs diag(H^-1): the whole inverse
            inverse = torch.cholesky_inverse(factor)  # (C, C)
            alpha = inverse @ (y - self.mean)  # (C,)
            at = self_index.clamp(min=0)
            loo = y[at] - alpha[at] / inverse.diagonal()[at]
        else:  # a solve is 3x cheaper than the inverse
            alpha = torch.cholesky_solve((y - self.mean)[:, None], factor)[:, 0]
            loo = torch.zeros_like(self_index, dtype=y.dtype)
        kernel_qc = torch.exp(-self._scaled(d2_qc, self.log_window, self.log_bandwidth))
        outside = self.mean + kernel_qc @ alpha
        prediction = torch.where(inside, loo, outside)
        if self.attention:
            logits = -self._scaled(
                d2_qc, self.log_attention_window, self.log_temperature
            )
            own = torch.zeros_like(logits, dtype=torch.bool)
            own[inside.nonzero().squeeze(1), self_index[inside]] = True
            weights = torch.softmax(logits.masked_fill(own, -math.inf), dim=-1)
            prediction = prediction + self.gamma * (weights @ (y - self.mean))
        return prediction
