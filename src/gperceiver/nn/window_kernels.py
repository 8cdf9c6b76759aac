"""Fused CPU kernels of the decoder's window attention (numba).

:class:`~gperceiver.nn.window_attention._WindowAttention` reads, for each target, its
``W`` neighbouring normed tokens. Written with torch ops, every target is a
batch of tiny matrix products ((H x D) by (D x W)) after a gather of its
neighbours into a (targets, W, D) copy; on a CPU those run at a tenth of the
machine's matmul rate (BENCHMARKS.md, *Scale*, session 11). These kernels
read each neighbour row straight from the normed tokens, in cache, and never
gather them. They are torch custom operators (``torch.ops.gperceiver.*``), so
``FlopCounterMode`` counts their multiply-adds (formulas below) like a matmul's.

Shape letters: N targets (batch rows x targets per row), H heads, D width,
W neighbours per target, R rows of the normed tokens (batch x sequence).
Every tensor is float32 and contiguous; ``index`` is int64, ``inside`` bool.
Per-target tensors are head-major, (H, N, ...): the layout in which the
layer's per-head einsums produce their queries and gradients, so neither is
copied into another (BENCHMARKS.md, *Scale*, session 13).

Compiled and launched as :mod:`gperceiver.nn.kernels` says (serial or parallel).
Where a C compiler is at hand the same three kernels run as C instead
(``csrc/window.c``, built for the layer's heads and width by
:mod:`gperceiver.nn.native`): there the per-target tiles stay in registers,
which numba's code does not manage (a 10k-marker train step 9% faster,
BENCHMARKS.md, *Scale*, session 15). These numba kernels are the fallback.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
from numba import prange
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from gperceiver.nn import native
from gperceiver.nn.kernels import kernel


def available(*tensors: Tensor) -> bool:
    """Whether the kernels take these tensors: float32 on the CPU."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _c_kernels(heads: int, width: int, *tensors: Tensor):
    """The C library of these kernels for ``heads`` x ``width`` tiles, or None:
    also where one of ``tensors`` is not laid out as the C code reads it
    (contiguous; float32, ``index`` int64, ``inside`` bool), which numba takes."""
    if not all(t.is_contiguous() and t.dtype in _C_DTYPES for t in tensors):
        return None
    lib = native.library("window.c", HEADS=heads, WIDTH=width)
    if lib is not None and not hasattr(lib, "_typed"):
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        lib.gp_window_scores.argtypes = [pointer] * 6 + [size] * 4
        lib.gp_window_mix.argtypes = [pointer] * 4 + [size] * 4
        lib.gp_window_backward.argtypes = [pointer] * 8 + [size] * 6 + [ctypes.c_int]
        for name in ("scores", "mix", "backward"):
            getattr(lib, f"gp_window_{name}").restype = None
        lib._typed = True
    return lib


_C_DTYPES = (torch.float32, torch.int64, torch.bool)


@kernel
def _scores(q, bias, inside, normed, index, out):  # pragma: no cover - compiled
    heads, n_targets, width = q.shape
    for n in prange(n_targets):
        for w in range(index.shape[1]):
            if not inside[n, w]:
                for h in range(heads):
                    out[h, n, w] = -np.inf
                continue
            r = index[n, w]
            for h in range(heads):
                acc = np.float32(0.0)
                for d in range(width):
                    acc += q[h, n, d] * normed[r, d]
                out[h, n, w] = acc + bias[h, n, w]


@kernel
def _mix(weights, normed, index, out):  # pragma: no cover - compiled
    heads, n_targets, near = weights.shape
    width = normed.shape[1]
    for n in prange(n_targets):
        for h in range(heads):
            out[h, n] = 0.0
        for w in range(near):
            r = index[n, w]
            for h in range(heads):
                a = weights[h, n, w]
                for d in range(width):
                    out[h, n, d] += a * normed[r, d]


@kernel
def _backward(
    q, normed, index, weights, grad, per_row, zero, grad_q, grad_bias, grad_normed
):  # pragma: no cover - compiled
    heads, n_targets, width = q.shape
    near = weights.shape[2]
    # batch rows in parallel: the targets of one row read only that row's
    # tokens, so no two threads add into the same row of grad_normed, whose
    # part each zeroes first with ``zero`` (in cache, no separate pass)
    n_rows = n_targets // per_row
    seq = grad_normed.shape[0] // n_rows
    for b in prange(n_rows):
        if zero:
            grad_normed[b * seq : (b + 1) * seq] = 0.0
        grad_a = np.empty((heads, near), np.float32)
        row_grad = np.empty(width, np.float32)
        for n in range(b * per_row, (b + 1) * per_row):
            for w in range(near):
                r = index[n, w]
                for h in range(heads):
                    acc = np.float32(0.0)
                    for d in range(width):
                        acc += grad[h, n, d] * normed[r, d]
                    grad_a[h, w] = acc
            for h in range(heads):  # through the softmax
                total = np.float32(0.0)
                for w in range(near):
                    total += grad_a[h, w] * weights[h, n, w]
                for w in range(near):
                    grad_a[h, w] = weights[h, n, w] * (grad_a[h, w] - total)
                    grad_bias[h, n, w] = grad_a[h, w]
                grad_q[h, n] = 0.0
            for w in range(near):
                r = index[n, w]
                row_grad[:] = 0.0
                for h in range(heads):
                    s, a = grad_a[h, w], weights[h, n, w]
                    for d in range(width):
                        grad_q[h, n, d] += s * normed[r, d]
                        row_grad[d] += s * q[h, n, d] + a * grad[h, n, d]
                for d in range(width):
                    grad_normed[r, d] += row_grad[d]


@torch.library.custom_op("gperceiver::window_scores", mutates_args=())
def window_scores(
    q: Tensor, bias: Tensor, inside: Tensor, normed: Tensor, index: Tensor
) -> Tensor:
    """Scores (H, N, W) ``q[h, n] . normed[index[n, w]] + bias[h, n, w]`` of
    queries ``q`` (H, N, D), offsets ``bias`` (H, N, W), normed tokens (R, D)
    and neighbour rows ``index`` (N, W); ``-inf`` where ``inside`` (N, W) is
    False (a neighbour outside the sequence)."""
    out = torch.empty_like(bias)
    heads, n_targets, width = q.shape
    work = out.numel() * width
    lib = _c_kernels(heads, width, q, bias, inside, normed, index)
    if lib is not None:
        args = [t.data_ptr() for t in (q, bias, inside, normed, index, out)]
        near = bias.shape[-1]
        native.split(
            lambda a, b: lib.gp_window_scores(*args, a, b, n_targets, near),
            n_targets,
            _scores.threads(work),
        )
        return out
    _scores(
        work,
        q.numpy(),
        bias.numpy(),
        inside.numpy(),
        normed.numpy(),
        index.numpy(),
        out.numpy(),
    )
    return out


@torch.library.custom_op("gperceiver::window_mix", mutates_args=())
def window_mix(weights: Tensor, normed: Tensor, index: Tensor) -> Tensor:
    """``sum_w weights[h, n, w] normed[index[n, w]]`` (H, N, D) of weights
    (H, N, W); arguments as in :func:`window_scores`."""
    out = weights.new_empty(*weights.shape[:2], normed.shape[1])
    heads, n_targets, near = weights.shape
    work = out.numel() * near
    lib = _c_kernels(heads, normed.shape[1], weights, normed, index)
    if lib is not None:
        args = [t.data_ptr() for t in (weights, normed, index, out)]
        native.split(
            lambda a, b: lib.gp_window_mix(*args, a, b, n_targets, near),
            n_targets,
            _mix.threads(work),
        )
        return out
    _mix(
        work,
        weights.numpy(),
        normed.numpy(),
        index.numpy(),
        out.numpy(),
    )
    return out


@torch.library.custom_op("gperceiver::window_backward", mutates_args=("grad_normed",))
def window_backward(
    q: Tensor,
    normed: Tensor,
    index: Tensor,
    weights: Tensor,
    grad: Tensor,
    per_row: int,
    grad_normed: Tensor,
    zero: bool,
) -> tuple[Tensor, Tensor]:
    """Gradients of ``window_mix(softmax(window_scores(q, bias, ...)))`` for
    ``grad`` (H, N, D) of its output: ``(grad_q, grad_bias)``, and the tokens'
    added into ``grad_normed`` (R, D) (overwritten with ``zero``).

    ``weights`` (H, N, W) are the softmax weights of the forward pass (zero
    outside the sequence). Targets come ``per_row`` at a time per batch row,
    the rows of ``normed`` are the batch rows' sequences one after the other (R
    = batch rows x sequence), and the targets of one batch row index only that
    row's tokens (as ``LocalAttention`` builds ``index``).
    """
    n_targets = q.shape[1]
    if n_targets % per_row or normed.shape[0] % (n_targets // per_row):
        raise ValueError(
            f"{n_targets} targets in rows of {per_row} do not split "
            f"{normed.shape[0]} token rows"
        )
    grad_q, grad_bias = torch.empty_like(q), torch.empty_like(weights)
    arrays = (q, normed, index, weights, grad)
    work = weights.numel() * q.shape[-1]
    heads, _, width = q.shape
    lib = _c_kernels(heads, width, *arrays, grad_normed)
    if lib is not None:
        args = [t.data_ptr() for t in (*arrays, grad_q, grad_bias, grad_normed)]
        near, seq = weights.shape[-1], normed.shape[0] // (n_targets // per_row)

        def rows(a: int, b: int) -> None:  # batch rows [a, b): disjoint token rows
            lib.gp_window_backward(
                *args, a * per_row, b * per_row, n_targets, near, a * seq, b * seq, zero
            )

        native.split(rows, n_targets // per_row, _backward.threads(work))
        return grad_q, grad_bias
    _backward(
        work,
        *(t.numpy() for t in arrays),
        per_row,
        zero,
        grad_q.numpy(),
        grad_bias.numpy(),
        grad_normed.numpy(),
    )
    return grad_q, grad_bias


def _products(heads: int, targets: int, width: int, near: int) -> int:
    """FLOPs of one (H, D) x (D, W) product per target: 2 H N D W."""
    return 2 * heads * targets * width * near


@register_flop_formula(torch.ops.gperceiver.window_scores)
def _scores_flops(q_shape, bias_shape, *args, **kwargs) -> int:
    return _products(*q_shape, bias_shape[-1])


@register_flop_formula(torch.ops.gperceiver.window_mix)
def _mix_flops(weights_shape, normed_shape, *args, **kwargs) -> int:
    h, n, w = weights_shape
    return _products(h, n, normed_shape[1], w)


@register_flop_formula(torch.ops.gperceiver.window_backward)
def _backward_flops(q_shape, normed_shape, index_shape, weights_shape, *args, **kwargs):
    # the weights' gradient, the queries' and the tokens' (two products)
    return 4 * _products(*q_shape, weights_shape[-1])
