"""Fused C kernels of token-space attention (``csrc/token.c``).

:class:`~gperceiver.nn.token_space.TokenAttention` written with torch ops runs
five or six thin matrix products over the (B, M, D) normed tokens per read
((M x D) by (D x Q), Q = heads x latents = 32 by default), each a separate
pass over memory at 80-120 GFLOP/s on two cores whose square matmul reaches
180 (BENCHMARKS.md, *Scale*, session 16). These kernels make one pass: each
block of token rows is read once into registers, and forward computes its
scores, an online softmax and the weighted sum (and, with ``keep``, writes the
scores for backward); backward recomputes the weights from those scores, or
from the tokens again, and the forward's shift and denominator, and does the
scores' gradient and the queries' and tokens' gradients. One read at 10k
markers x batch 8 on two threads: forward 6.4 vs 10.3 ms, forward + backward
20.2 vs 29.7 ms (``benchmarks/native_kernels.py``).

They are torch custom operators (``torch.ops.gperceiver.token_*``) with FLOP
formulas, so ``FlopCounterMode`` counts them as the products they replace.
Built by :mod:`gperceiver.nn.native` for the layer's query rows and width
(both multiples of 8); where that is impossible (no compiler,
``GPERCEIVER_NATIVE=0``, other devices or dtypes) :func:`available` is False
and the torch path runs.

Shape letters: B batch, Q query rows (heads x latents), M tokens, D width.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from gperceiver.nn import native


def _library(queries: int, width: int):
    """The C library for ``queries`` x ``width`` tiles, typed, or None."""
    if queries % 8 or width % 8:
        return None
    lib = native.library("token.c", QUERIES=queries, WIDTH=width)
    if lib is not None and not hasattr(lib, "_typed"):
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        lib.gp_token_forward.argtypes = [pointer] * 7 + [size] * 3
        lib.gp_token_backward.argtypes = [pointer] * 10 + [size] * 3 + [ctypes.c_int]
        lib.gp_token_forward.restype = lib.gp_token_backward.restype = None
        lib._typed = True
    return lib


def available(q: Tensor, normed: Tensor, valid: Tensor | None) -> bool:
    """Whether the kernels take queries ``q`` (B, Q, D), tokens ``normed``
    (B, M, D) and ``valid`` (B, M) bool or None: contiguous float32 on the CPU,
    and the library builds for Q x D."""
    tensors = [q, normed] + ([] if valid is None else [valid])
    if not all(t.device.type == "cpu" and t.is_contiguous() for t in tensors):
        return False
    if q.dtype != torch.float32 or normed.dtype != torch.float32:
        return False
    if valid is not None and valid.dtype != torch.bool:
        return False
    return _library(q.shape[1], q.shape[2]) is not None


@torch.library.custom_op("gperceiver::token_forward", mutates_args=())
def token_forward(
    q: Tensor, normed: Tensor, valid: Tensor | None, keep: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Softmax attention of queries ``q`` (B, Q, D) over ``normed`` (B, M, D)
    (keys and values at once; ``valid`` (B, M) masks keys): ``mixed`` (B, Q, D)
    ``= sum_m a_m n_m`` with ``a = exp(q . n - top) / den``, and ``top``,
    ``den`` (B, Q) (0 and 1 for a query without valid keys, whose output is 0);
    with ``keep`` also the scores ``q . n`` (B, M, Q) for backward, else an
    empty tensor."""
    b, queries, width = q.shape
    m = normed.shape[1]
    mixed = torch.empty_like(q)
    top, den = q.new_empty(b, queries), q.new_empty(b, queries)
    scores = q.new_empty((b, m, queries) if keep else (0,))
    lib = _library(queries, width)
    args = [native.pointer(t) for t in (q, normed, valid, mixed, top, den, scores)]
    native.split(
        lambda b0, b1: lib.gp_token_forward(*args, b0, b1, m),
        b,
        native.threads(b * m * queries),
    )
    return mixed, top, den, scores


@token_forward.register_fake
def _(q, normed, valid, keep):
    b, queries, _ = q.shape
    scores = q.new_empty((b, normed.shape[1], queries) if keep else (0,))
    return torch.empty_like(q), q.new_empty(b, queries), q.new_empty(b, queries), scores


@torch.library.custom_op("gperceiver::token_backward", mutates_args=("grad_normed",))
def token_backward(
    q: Tensor,
    normed: Tensor,
    valid: Tensor | None,
    top: Tensor,
    den: Tensor,
    grad: Tensor,
    mixed: Tensor,
    scores: Tensor,
    grad_normed: Tensor,
    add: bool,
) -> Tensor:
    """Gradients of :func:`token_forward` for ``grad`` (B, Q, D) of ``mixed``:
    the queries' (returned) and the tokens' (both uses), written into
    ``grad_normed`` (B, M, D), or added to it with ``add``; the forward's
    ``scores`` (empty: computed again)."""
    b, queries, width = q.shape
    grad_q = torch.empty_like(q)
    lib = _library(queries, width)
    tensors = (q, normed, valid, top, den, grad, mixed, scores, grad_q, grad_normed)
    args = [native.pointer(t) for t in tensors]
    m = normed.shape[1]
    native.split(
        lambda b0, b1: lib.gp_token_backward(*args, b0, b1, m, int(add)),
        b,
        native.threads(b * m * queries),
    )
    return grad_q


@token_backward.register_fake
def _(q, normed, valid, top, den, grad, mixed, scores, grad_normed, add):
    return torch.empty_like(q)


def _product(q_shape, normed_shape) -> int:
    """FLOPs of one (M x D) by (D x Q) product per batch row: 2 B M Q D."""
    b, queries, width = q_shape
    return 2 * b * normed_shape[1] * queries * width


@register_flop_formula(torch.ops.gperceiver.token_forward)
def _forward_flops(q_shape, normed_shape, *args, **kwargs) -> int:
    return 2 * _product(q_shape, normed_shape)  # scores, weighted sum


@register_flop_formula(torch.ops.gperceiver.token_backward)
def _backward_flops(q_shape, normed_shape, *args, **kwargs) -> int:
    # the scores' gradient, the queries' and two for the tokens'; the scores
    # themselves again unless kept (args[5]: the kept scores' shape)
    kept = args[5][0] > 0
    return (4 if kept else 5) * _product(q_shape, normed_shape)
