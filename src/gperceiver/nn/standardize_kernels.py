"""Row standardization (a layer norm without its affine map) as numba kernels.

:func:`gperceiver.nn.token_space.standardize` of the (B, M, D) tokens, forward
and backward, on the CPU in float32: one pass over the rows each way, where
torch's layer norm took 9.9 ms for forward + backward of (8, 10000, 64) against
4.5 ms here (its backward alone 6.7 ms), on the session-12 box (BENCHMARKS.md,
*Scale*). Backward needs only the output and ``1 / sqrt(var + eps)`` per row:
``dx = r (g - mean(g) - y mean(g y))``.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from gperceiver.nn.kernels import kernel


def available(x: Tensor) -> bool:
    """Whether the kernels take ``x``: float32 on the CPU."""
    return x.device.type == "cpu" and x.dtype == torch.float32


@njit(inline="always")
def standardize_row(x, eps, y):  # pragma: no cover - compiled
    """``y`` = ``x`` (D,) standardized; returns 1 / sqrt(var + eps). ``y`` may
    be ``x`` (in place)."""
    width = x.shape[0]
    mean = np.float32(0.0)
    for k in range(width):
        mean += x[k]
    mean /= width
    var = np.float32(0.0)
    for k in range(width):
        t = x[k] - mean
        var += t * t
    scale = np.float32(1.0) / np.sqrt(var / width + eps)
    for k in range(width):
        y[k] = (x[k] - mean) * scale
    return scale


@njit(inline="always")
def standardize_row_grad(grad, y, scale, out):  # pragma: no cover - compiled
    """``out`` = the input row's gradient from the output's ``grad`` (D,), the
    output ``y`` and ``scale`` (from :func:`standardize_row`)."""
    width = grad.shape[0]
    mean_g = np.float32(0.0)
    mean_gy = np.float32(0.0)
    for k in range(width):
        mean_g += grad[k]
        mean_gy += grad[k] * y[k]
    mean_g /= width
    mean_gy /= width
    for k in range(width):
        out[k] = scale * (grad[k] - mean_g - y[k] * mean_gy)


@kernel
def _forward(x, eps, y, rstd):  # pragma: no cover - compiled
    for r in prange(x.shape[0]):
        rstd[r] = standardize_row(x[r], eps, y[r])


@kernel
def _backward(grad, y, rstd, out):  # pragma: no cover - compiled
    for r in prange(grad.shape[0]):
        standardize_row_grad(grad[r], y[r], rstd[r], out[r])


class Standardize(torch.autograd.Function):
    """``x`` (..., D) -> mean 0, variance 1 per row (variance over D, eps
    inside the square root, as ``F.layer_norm``). ``shared``: a weak reference
    to the :class:`~gperceiver.nn.token_space.SharedTokens` of the output; when
    the incoming gradient is the buffer it handed back, backward writes the
    input's gradient over it (no fresh (..., D) tensor)."""

    @staticmethod
    def forward(ctx, x, eps=1e-5, shared=None):
        d = x.shape[-1]
        rows = x.detach().contiguous().view(-1, d)
        y = torch.empty_like(rows)
        rstd = rows.new_empty(len(rows))
        _forward(rows.numel(), rows.numpy(), np.float32(eps), y.numpy(), rstd.numpy())
        ctx.save_for_backward(y, rstd)
        ctx.shared = shared
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        y, rstd = ctx.saved_tensors
        shared = None if ctx.shared is None else ctx.shared()
        rows = grad.contiguous().view(y.shape)
        # each row is read whole before it is written: in place is safe
        reuse = shared is not None and shared.handed_back(rows)
        out = rows if reuse else torch.empty_like(y)
        _backward(rows.numel(), rows.numpy(), y.numpy(), rstd.numpy(), out.numpy())
        return out.view(grad.shape), None, None
