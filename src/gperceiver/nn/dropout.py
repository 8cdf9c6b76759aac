"""Dropout whose mask is a hash of its position, recomputed in backward.

``torch.nn.Dropout`` on the CPU draws a Bernoulli tensor (5 ns an element on
the benchmark boxes: 4% of a 10k-marker train step, 7% at 100k; BENCHMARKS.md,
*Scale*, session 12) and keeps the mask for backward. Here, on the CPU in
float32, element ``i`` is kept when the top 32 bits of splitmix64(seed + i x
golden gamma) are at least ``p`` x 2^32: one numba pass each way, no mask
tensor kept, and the seed (one draw from torch's default generator per call)
makes a run as reproducible under ``torch.manual_seed`` as the torch module,
also under activation checkpointing (which replays the generator's state).
Elsewhere (CUDA, float64, bfloat16) it is ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor, nn

from gperceiver.nn.kernels import kernel

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_BLOCK = 1 << 14  # elements per parallel task


@njit(fastmath=True, cache=True, nogil=True)
def _masked_scale_block(x, out, start, seed, threshold, scale):  # pragma: no cover
    """Elements ``start ..`` of the flat tensor: ``x`` and ``out`` their slices."""
    for j in range(x.shape[0]):
        z = seed + np.uint64(start + j) * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        out[j] = x[j] * scale if (z >> np.uint64(32)) >= threshold else 0.0


@kernel
def _masked_scale(x, out, seed, threshold, scale):  # pragma: no cover - compiled
    """``out[i] = x[i] * scale`` where element ``i`` is kept, else 0 (flat).
    Each block goes to the loop above as slices: written inline in the
    ``prange`` loop, the parallel variant ran 1.5-2x slower a thread than the
    serial one (numba's parallel loop body is not vectorized alike)."""
    n = x.shape[0]
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        stop = min(n, start + _BLOCK)
        _masked_scale_block(
            x[start:stop], out[start:stop], start, seed, threshold, scale
        )


def _apply(x: Tensor, seed: int, p: float) -> Tensor:
    out = torch.empty_like(x)
    _masked_scale(
        x.numel(),
        x.reshape(-1).numpy(),
        out.view(-1).numpy(),
        np.uint64(seed),
        np.uint64(round(p * 2**32)),
        np.float32(1.0 / (1.0 - p)),
    )
    return out


class _HashDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seed):
        ctx.p, ctx.seed = p, seed
        return _apply(x.contiguous(), seed, p)

    @staticmethod
    def backward(ctx, grad):  # the same mask: the same seed
        return _apply(grad.contiguous(), ctx.seed, ctx.p), None, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``torch.nn.functional.dropout(x, p, training)``, with the hashed mask on
    the CPU in float32."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.dtype != torch.float32 or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    seed = int(torch.randint(0, 2**62, ()).item())
    return _HashDropout.apply(x, p, seed)


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` with :func:`dropout`'s mask (no parameters:
    checkpoints are the same)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
