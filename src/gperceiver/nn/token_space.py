"""Attention in token space: the queries move to the tokens' D channels.

Cross-attention with one head never projects its M tokens to keys and values:
``q . (W_k LN(x) + b_k)`` is ``(W_k^T q) . LN(x)`` plus a per-query constant the
softmax drops, and the weighted values are ``W_v (sum_m a_m LN(x_m)) + b_v``.
With ``LN(x) = gamma n + beta`` for the standardized tokens ``n``, gamma also
moves to the queries and beta to the output, so every token-space read (the
encoder's iterations, the decoder's window) shares one tensor ``n`` (B, M, D).

Shape letters: B batch, H heads, L queries, M tokens, C tokens in one chunk,
D width.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gperceiver.nn import standardize_kernels, token_kernels
from gperceiver.nn.standardize_kernels import Standardize


def standardize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``x`` (..., D) layer-normed without the norm's affine map (mean 0 and
    variance 1 per row): what token-space attention reads, its ``LN``'s scale
    and shift folded into queries and outputs, so the encoder and the decoder's
    window share one such tensor. On the CPU in float32 a numba kernel each way
    (:mod:`gperceiver.nn.standardize_kernels`); elsewhere torch's layer norm
    (unit scale and zero shift passed explicitly: its CPU kernel without them
    measured slower)."""
    if standardize_kernels.available(x):
        return Standardize.apply(x, eps)
    d = x.shape[-1]
    return F.layer_norm(x, (d,), x.new_ones(d), x.new_zeros(d), eps)


def fold_norm(norm: nn.LayerNorm, mixed: Tensor, read: Tensor | float) -> Tensor:
    """``sum_m a_m LN(x_m)`` from ``mixed = sum_m a_m standardize(x_m)`` (..., D):
    ``gamma * mixed + beta * sum_m a_m``, the weights' sum ``read`` 1, or 0 for a
    query that read nothing."""
    return torch.addcmul(norm.bias * read, mixed, norm.weight)


class SharedTokens(list):
    """Token space's K/V cache, ``[(n, n)]`` with ``n`` (B, 1, M, D), and the
    one buffer into which every read of it (:class:`TokenAttention`, e.g. each
    encoder iteration) adds its gradient of ``n`` in place: the last backward
    to run returns the sum, the others none, so autograd never adds (B, M, D)
    gradients out of place (at 500k markers x batch 8 each such sum was a fresh
    1 GB tensor)."""

    def __init__(self, n: Tensor):
        """``n`` (B, M, D): the standardized tokens."""
        super().__init__([(n[:, None], n[:, None])])
        # the (B, M, D) tensor itself for other readers (the decoder's window):
        # a view of the cache's (B, 1, M, D) would cost a zero-filled copy of its
        # gradient in backward (select_backward)
        self.standardized = n
        n._shared_tokens = weakref.ref(self)  # see owner()
        self.grad: Tensor | None = None
        self.readers = self.seen = 0
        self.released: int | None = None  # data_ptr of the last sum handed back

    @classmethod
    def of(cls, tokens: Tensor, in_place: bool = False) -> SharedTokens:
        """The cache of :func:`standardize` of ``tokens`` (B, M, D); with
        ``in_place`` the tokens themselves are standardized, and backward turns the
        summed gradient into the tokens' in its own buffer (no (B, M, D) tensor is
        allocated for either: :class:`_StandardizeInPlace`). Without it, on the
        CPU in float32, backward still writes the tokens' gradient over the
        summed one (:class:`~gperceiver.nn.standardize_kernels.Standardize`)."""
        if not in_place and not standardize_kernels.available(tokens):
            return cls(standardize(tokens))
        shared = cls.__new__(cls)
        if not in_place:
            cls.__init__(shared, Standardize.apply(tokens, 1e-5, weakref.ref(shared)))
            return shared
        n = _StandardizeInPlace.apply(tokens, shared)
        cls.__init__(shared, n)
        return shared

    @staticmethod
    def owner(n: Tensor) -> SharedTokens | None:
        """The cache whose :attr:`standardized` tensor ``n`` is, if any."""
        ref = getattr(n, "_shared_tokens", None)
        return None if ref is None else ref()

    def add_grad(self, like: Tensor) -> Tensor:
        """The buffer (uninitialised the first time: the first writer writes)."""
        if self.grad is None:
            self.grad = torch.empty_like(like)
        return self.grad

    def handed_back(self, grad: Tensor) -> bool:
        """Whether ``grad`` is (a contiguous view of) the summed buffer the last
        reader handed back, which its receiver may overwrite."""
        return self.released == grad.data_ptr() and grad.is_contiguous()

    def take_grad(self) -> Tensor | None:
        """Called once per backward of a reader: the sum after the last one."""
        self.seen += 1
        if self.seen < self.readers:
            return None
        grad, self.grad, self.seen = self.grad, None, 0
        self.released = None if grad is None else grad.data_ptr()
        return grad


# token floats from which a batch's tokens are standardized in place (1 GB at
# 500k markers x batch 8: a fresh tensor fewer forward and backward, which this
# machine's VM backs with pages at 1-5 s of system time a GB; BENCHMARKS.md,
# Scale, session 11); below it a separate output measured faster
IN_PLACE_MIN_FLOATS = 1 << 27
_ROWS_PER_CHUNK = 1 << 16  # rows of the in-place backward's temporaries


class _StandardizeInPlace(torch.autograd.Function):
    """:func:`standardize` of ``x`` (..., D) written over ``x``; backward writes
    the input's gradient over the incoming one when that is ``shared``'s buffer
    (:class:`SharedTokens`), chunk by chunk, so neither direction allocates a
    tensor of the size of ``x``: ``dx = r (g - mean(g) - y mean(g y))`` for
    output ``y`` and ``r = 1 / sqrt(var + eps)`` per row."""

    @staticmethod
    def forward(ctx, x, shared, eps=1e-5):
        var, mean = torch.var_mean(x, -1, keepdim=True, correction=0)
        rstd = var.add_(eps).rsqrt_()
        x.sub_(mean).mul_(rstd)
        ctx.mark_dirty(x)
        # a weak reference: ``shared`` holds a view of the output, whose graph
        # holds this context; a strong one would make a cycle that keeps every
        # step's graph (1 GB of tokens at 500k x 8) until the garbage collector ran
        ctx.shared = weakref.ref(shared)
        ctx.save_for_backward(x, rstd)
        return x

    @staticmethod
    def backward(ctx, grad):
        y, rstd = ctx.saved_tensors
        shared = ctx.shared()
        reuse = shared is not None and shared.handed_back(grad)
        out = grad if reuse else torch.empty_like(y)
        d = y.shape[-1]
        rows = (grad.reshape(-1, d), y.reshape(-1, d), rstd.reshape(-1, 1))
        # one temporary for every chunk: a fresh one each time would be faulted
        # in afresh too
        scratch = y.new_empty(min(len(rows[0]), _ROWS_PER_CHUNK), d)
        for g, n, r, o in zip(
            *(t.split(_ROWS_PER_CHUNK) for t in rows),
            out.view(-1, d).split(_ROWS_PER_CHUNK),
            strict=True,
        ):
            tmp = scratch[: len(g)]
            mean_gy = torch.mul(g, n, out=tmp).mean(-1, keepdim=True)
            mean_g = g.mean(-1, keepdim=True)
            torch.mul(n, mean_gy, out=tmp)
            torch.sub(g, mean_g, out=o).sub_(tmp).mul_(r)
        return out, None, None


def merge_stats(
    parts: list[tuple[Tensor, Tensor, Tensor]],
) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax attention from per-chunk ``(numerator, denominator, shift)``
    parts (:func:`gperceiver.nn.attention._partial`), and the common shift
    ``s`` and denominator (B, H, L, 1) with which every weight is ``exp(score -
    s) / den`` (den 1 for a query without keys)."""
    top = torch.stack([shift for _, _, shift in parts]).amax(0)  # (B, H, L, 1)
    top = torch.where(top.isfinite(), top, 0.0)
    num = den = 0.0
    for chunk_num, chunk_den, shift in parts:
        scale = torch.exp(shift - top)
        num = num + chunk_num * scale
        den = den + chunk_den * scale
    den = torch.where(den > 0, den, 1.0)
    return num / den, top, den


class TokenAttention(torch.autograd.Function):
    """Softmax attention of token-space queries over normed tokens, in chunks.

    ``q`` (B, H, L, D) queries moved through ``W_k`` and scaled, ``normed``
    (B, 1, M, D) the normed tokens (keys and values at once), ``valid`` (B, 1, 1,
    M) bool or None, ``chunk`` tokens per block. Returns ``sum_m a_m n_m`` (B, H,
    L, D), ``a = softmax(q . n)`` (zeros for a query without valid tokens).

    Forward merges the chunks exactly (:func:`merge_stats`). With ``keep`` it
    keeps the weights ``a`` (B x HL x M floats) for backward; without, only the
    shift and denominator per query, and backward recomputes each chunk's scores
    from them (nothing of size L x M outlives a chunk). Either way backward
    writes the tokens' gradient chunk by chunk into one (B, 1, M, D) tensor in
    place, both of its uses (key and value) summed there. Scores are laid out
    tokens-major, (B, C, H * L), which runs faster on a CPU than (B, H * L, C).

    Where :func:`gperceiver.nn.token_kernels.available` (float32 on the CPU, a
    C compiler), forward and backward are one fused C pass each over the
    tokens instead, chunk unused (with ``keep`` forward writes the raw scores,
    B x M x HL floats, and backward reads them instead of recomputing).
    """

    @staticmethod
    def forward(ctx, q, normed, valid, chunk, keep=False, shared=None):
        b, h, length, d = q.shape
        ctx.shared = shared
        if shared is not None:
            shared.readers += 1
        rows = q.reshape(b, h * length, d)  # heads x queries as one dimension
        keys = None if valid is None else valid[:, 0, 0]  # (B, M)
        ctx.native = token_kernels.available(rows, normed[:, 0], keys)
        if ctx.native:  # one fused pass in C (keep: the scores kept)
            mixed, top, den, scores = token_kernels.token_forward(
                rows, normed[:, 0], keys, keep
            )
            ctx.save_for_backward(rows, normed, keys, top, den, mixed, scores)
            return mixed.view(b, h, length, d)
        parts = []
        for start in range(0, normed.shape[2], chunk):
            part = slice(start, start + chunk)
            mask = None if valid is None else valid[:, 0, 0, part, None]
            parts.append(_token_partial(rows, normed[:, 0, part], mask))
        mixed, top, den = merge_stats([p[:3] for p in parts])
        ctx.chunk, ctx.kept = chunk, None
        if keep:  # each chunk's exp(score - own shift) -> a (B, C, HL), in place
            ctx.kept = [
                w.mul_((torch.where(s.isfinite(), s, 0.0) - top).exp_().div_(den).mT)
                for _, _, s, w in parts
            ]
        ctx.save_for_backward(q, normed, valid, top, den, mixed)
        return mixed.view(b, h, length, d)

    @staticmethod
    def backward(ctx, grad):
        if ctx.native:
            return _native_backward(ctx, grad)
        q, normed, valid, top, den, mixed = ctx.saved_tensors
        b, h, length, d = q.shape
        q_rows = q.reshape(b, h * length, d)
        grad_rows = grad.reshape(b, h * length, d)
        delta = (grad_rows * mixed).sum(-1)[:, None]  # (B, 1, HL): sum_m a_m g . n_m
        shift = (top + den.log()).mT  # (B, 1, HL): a = exp(score - shift)
        grad_q = torch.zeros_like(q_rows)
        shared = ctx.shared
        if shared is None:
            grad_normed, first = torch.empty_like(normed), True
        else:
            first = shared.grad is None
            grad_normed = shared.add_grad(normed)
        for i, start in enumerate(range(0, normed.shape[2], ctx.chunk)):
            part = slice(start, start + ctx.chunk)
            n = normed[:, 0, part]  # (B, C, D)
            if ctx.kept is None:
                a = n @ q_rows.mT  # (B, C, HL) scores, then weights
                if valid is not None:
                    a.masked_fill_(~valid[:, 0, 0, part, None], float("-inf"))
                a.sub_(shift).exp_()
            else:
                a = ctx.kept[i]
            grad_s = (n @ grad_rows.mT).sub_(delta).mul_(a)  # the scores' gradient
            grad_q.baddbmm_(grad_s.mT, n)
            # key and value uses of the tokens, heads summed, written in place
            out = grad_normed[:, 0, part]  # (B, C, D), a strided view
            if first:
                torch.bmm(grad_s, q_rows, out=out)
            else:
                out.baddbmm_(grad_s, q_rows)
            out.baddbmm_(a, grad_rows)
        if shared is not None:
            grad_normed = shared.take_grad()
        return grad_q.view_as(q), grad_normed, None, None, None, None


def _native_backward(ctx, grad: Tensor) -> tuple:
    """:meth:`TokenAttention.backward` by the C kernel: the tokens' gradient
    written into (or added to) the shared buffer as the torch path does."""
    rows, normed, keys, top, den, mixed, scores = ctx.saved_tensors
    shared = ctx.shared
    if shared is None:
        grad_normed, add = torch.empty_like(normed), False
    else:
        add = shared.grad is not None
        grad_normed = shared.add_grad(normed)
    grad_q = token_kernels.token_backward(
        rows,
        normed[:, 0],
        keys,
        top,
        den,
        grad.reshape(rows.shape).contiguous(),
        mixed,
        scores,
        grad_normed[:, 0],
        add,
    )
    if shared is not None:
        grad_normed = shared.take_grad()
    return grad_q.view(grad.shape), grad_normed, None, None, None, None


def _token_partial(
    rows: Tensor, n: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_partial` of token-space queries ``rows`` (B, HL, D) over one chunk
    of normed tokens ``n`` (B, C, D) (``mask`` (B, C, 1) or None): numerator
    (B, HL, D), denominator and shift (B, HL, 1), and the weights ``exp(score -
    shift)`` (B, C, HL) (shift 0 where it is ``-inf``)."""
    scores = n @ rows.mT  # (B, C, HL)
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    shift = scores.amax(1, keepdim=True)  # (B, 1, HL), -inf: every key masked
    weights = scores.sub_(torch.where(shift.isfinite(), shift, 0.0)).exp_()
    num = weights.mT @ n
    den = weights.sum(1)[..., None]
    return num, den, shift.mT, weights
