"""Fused CPU kernels of the marker tokens' allele part (numba).

Token ``(b, m)`` of :class:`~gperceiver.nn.embeddings.MarkerEmbedding` with
per-marker allele vectors is

    position[m] + mean over copies p of (table[a] + per_marker[index[m], a]),
    a = alleles[b, m, p].

Written with torch ops that is an id-count tensor, a (B M', K) x (K, D) product,
a per-marker (B, K) x (K, D) product batched over markers, a gather of the
per-marker rows and an add, and in backward as many passes again plus a
scatter of the gathered rows' gradient: a seventh of a 10k-marker train step for
a few percent of its FLOPs (BENCHMARKS.md, *Scale*, session 12). These kernels
make one pass over the tokens each way.

Shape letters: B batch, M markers of the map, M' markers read, P ploidy, K allele
ids (A + 2), D width. Float32 and contiguous; ``alleles`` and ``index`` int64;
``index`` strictly increasing (each marker read once), so markers can run in
parallel without two threads adding into the same per-marker row.

Where a C compiler is at hand the same two kernels run as C
(``csrc/tokens.c``, built for the width by :mod:`gperceiver.nn.native`), whose
rows stay in vector registers: forward of a 10k-marker batch of 8 in 2.8 vs
5.7 ms on two threads, forward + backward 10.6 vs 18.1 ms
(``benchmarks/native_kernels.py``; BENCHMARKS.md, *Scale*, session 16). These
numba kernels are the fallback.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
from numba import prange
from torch import Tensor

from gperceiver.nn import native
from gperceiver.nn.kernels import kernel
from gperceiver.nn.standardize_kernels import standardize_row, standardize_row_grad

# markers are split into at most this many parts, each summing its own part
# of the shared table's gradient (no two threads add into one row)
_PARTS = 256


def available(alleles: Tensor, index: Tensor, *floats: Tensor) -> bool:
    """Whether the kernels take these tensors: CPU float32 weights, (B, M', P)
    ids and one strictly increasing (M',) index."""
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in floats)
        and alleles.device.type == "cpu"
        and index.dim() == 1
        and len(index) > 0
        and bool((index[1:] > index[:-1]).all())
    )


@kernel
def _forward(
    alleles, table, per_marker, index, position, eps, out, rstd
):  # pragma: no cover - compiled
    batch, markers, ploidy = alleles.shape
    width = table.shape[1]
    share = np.float32(1.0 / ploidy)
    own = per_marker.shape[0] > 0  # per-marker vectors or none
    norm = rstd.shape[0] > 0  # standardize each token (rstd (B, M')) or not
    for m in prange(markers):
        r = index[m]
        for b in range(batch):
            row = out[b, m]
            for d in range(width):
                row[d] = position[m, d]
            for p in range(ploidy):
                a = alleles[b, m, p]
                if own:
                    for d in range(width):
                        row[d] += share * (table[a, d] + per_marker[r, a, d])
                else:
                    for d in range(width):
                        row[d] += share * table[a, d]
            if norm:  # on the row in cache
                rstd[b, m] = standardize_row(row, eps, row)


@kernel
def _backward(
    alleles, index, grad, normed, rstd, grad_parts, grad_per_marker, grad_position
):  # pragma: no cover - compiled
    batch, markers, ploidy = alleles.shape
    n_parts, ids, width = grad_parts.shape
    share = np.float32(1.0 / ploidy)
    own = grad_per_marker.shape[0] > 0
    norm = rstd.shape[0] > 0  # grad is of the standardized tokens ``normed``
    step = (markers + n_parts - 1) // n_parts
    for c in prange(n_parts):
        part = grad_parts[c]
        part[:] = 0.0
        row = np.empty(width, np.float32)  # the raw token's gradient
        for m in range(c * step, min(markers, (c + 1) * step)):
            r = index[m]
            grad_position[m] = 0.0
            if own:
                grad_per_marker[r] = 0.0
            for b in range(batch):
                if norm:  # through the standardization, in cache
                    standardize_row_grad(grad[b, m], normed[b, m], rstd[b, m], row)
                else:
                    for d in range(width):
                        row[d] = grad[b, m, d]
                for d in range(width):
                    grad_position[m, d] += row[d]
                for p in range(ploidy):
                    a = alleles[b, m, p]
                    for d in range(width):
                        part[a, d] += share * row[d]
                    if own:
                        for d in range(width):
                            grad_per_marker[r, a, d] += share * row[d]


def _c_kernels(width: int, *tensors: Tensor):
    """The C library of these kernels for ``width``, typed, or None: also where
    a tensor is not contiguous float32 (numba takes those)."""
    if width % 8 or not all(
        t.is_contiguous() and t.dtype == torch.float32 for t in tensors
    ):
        return None
    lib = native.library("tokens.c", WIDTH=width)
    if lib is not None and not hasattr(lib, "_typed"):
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        lib.gp_tokens_forward.argtypes = (
            [pointer] * 5 + [ctypes.c_float] + [pointer] * 2 + [size] * 6
        )
        lib.gp_tokens_backward.argtypes = [pointer] * 8 + [size] * 7
        lib._typed = True
    return lib


def _split_checked(call, stop: int, threads: int) -> None:
    """``call(start, end)`` over ranges of ``range(stop)`` on ``threads``
    threads (:func:`gperceiver.nn.native.split`); raises where a call reports
    (returns 0) an allele id outside the embedding table."""
    results = []
    native.split(lambda a, b: results.append(call(a, b)), stop, threads)
    if not all(results):
        raise ValueError("allele ids outside the embedding table")


def _c_forward(lib, alleles, table, per_marker, index, position, out, rstd) -> None:
    """:class:`AlleleTokens`' forward by the C kernel (``rstd`` empty: raw tokens)."""
    b, m, ploidy = alleles.shape
    tensors = (alleles, table, per_marker, index, position)
    args = [native.pointer(t) for t in tensors]
    tail = (1e-5, out.data_ptr(), native.pointer(rstd))
    sizes = (b, m, ploidy, table.shape[0])
    _split_checked(
        lambda m0, m1: lib.gp_tokens_forward(*args, *tail, m0, m1, *sizes),
        m,
        native.threads(out.numel()),
    )


def _c_backward(
    lib, grad, alleles, index, normed, rstd, ids, grad_per_marker, grad_position
):
    """:class:`AlleleTokens`' backward by the C kernel: writes the per-marker
    (empty: no such table) and position gradients, returns the shared table's
    gradient in parts (parts, K, D) to be summed: the numba kernel's fixed
    split, so the sum is the same on any number of threads."""
    b, m, ploidy = alleles.shape
    n_parts = min(_PARTS, m)
    step = -(-m // n_parts)
    parts = grad.new_empty(n_parts, ids, grad.shape[2])
    tensors = (alleles, index, grad, normed, rstd, parts, grad_per_marker)
    args = [native.pointer(t) for t in tensors] + [grad_position.data_ptr()]
    sizes = (step, b, m, ploidy, ids)
    _split_checked(
        lambda p0, p1: lib.gp_tokens_backward(*args, p0, p1, *sizes),
        n_parts,
        native.threads(grad.numel()),
    )
    return parts


class AlleleTokens(torch.autograd.Function):
    """Tokens (B, M', D) of ``alleles`` (B, M', P), the shared ``table`` (K, D),
    the per-marker vectors ``per_marker`` (M, K, D) at ``index`` (M',) or None,
    and the ``position`` vectors (M', D): see the module docstring. Gradients
    for ``table``, ``per_marker`` and ``position``.

    With ``standardize`` the tokens come out standardized, as
    :func:`~gperceiver.nn.token_space.standardize` would make them (same
    arithmetic), in the same pass: the raw tokens never reach memory, and
    backward goes through the standardization row by row in cache."""

    @staticmethod
    def forward(ctx, alleles, table, per_marker, index, position, standardize=False):
        b, m = alleles.shape[:2]
        out = position.new_empty(b, m, table.shape[1])
        rstd = position.new_empty((b, m) if standardize else (0, 0))
        alleles, index = alleles.contiguous(), index.contiguous()
        table, position = table.detach().contiguous(), position.detach().contiguous()
        own = per_marker is not None
        ctx.own, ctx.markers = own, per_marker.shape[0] if own else 0
        ctx.ids, ctx.width = table.shape
        if own:
            per_marker = per_marker.detach().contiguous()
        lib = _c_kernels(table.shape[1], table, position, out)
        if lib is not None:  # an empty rstd: raw tokens
            _c_forward(lib, alleles, table, per_marker, index, position, out, rstd)
        else:
            if not own:  # an empty table: the kernels skip the per-marker part
                per_marker = table.new_empty(0, *table.shape)
            _forward(
                out.numel(),
                alleles.numpy(),
                table.numpy(),
                per_marker.numpy(),
                index.numpy(),
                position.numpy(),
                np.float32(1e-5),
                out.numpy(),
                rstd.numpy(),
            )
        normed = out if standardize else out.new_empty(0, 0, 0)
        ctx.save_for_backward(alleles, index, normed, rstd)
        return out

    @staticmethod
    def backward(ctx, grad):
        alleles, index, normed, rstd = ctx.saved_tensors
        grad = grad.contiguous()
        shape = (ctx.markers, ctx.ids, ctx.width)  # (0, K, D) without per-marker
        # the kernel writes the rows of the markers read; the others stay zero
        read_all = len(index) == ctx.markers  # then index is 0..M-1
        grad_per_marker = grad.new_empty(shape) if read_all else grad.new_zeros(shape)
        grad_position = grad.new_empty(len(index), ctx.width)
        lib = _c_kernels(ctx.width, grad)
        if lib is not None:  # empty normed, rstd, per-marker table: none (NULL)
            parts = _c_backward(
                lib,
                grad,
                alleles,
                index,
                normed,
                rstd,
                ctx.ids,
                grad_per_marker,
                grad_position,
            )
        else:
            parts = grad.new_empty(min(_PARTS, len(index)), ctx.ids, ctx.width)
            _backward(
                grad.numel(),
                alleles.numpy(),
                index.numpy(),
                grad.numpy(),
                normed.numpy(),
                rstd.numpy(),
                parts.numpy(),
                grad_per_marker.numpy(),
                grad_position.numpy(),
            )
        grad_per_marker = grad_per_marker if ctx.own else None
        return None, parts.sum(0), grad_per_marker, None, grad_position, None
