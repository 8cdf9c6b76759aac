"""Pre-LN residual attention blocks whose heads split the width.

Over 500 lines on purpose: self-, cross- and windowed attention share their
projections, chunking and masking here, so each kernel is written once.

Shape letters: B batch, L queries (latents or targets), M keys (markers or latents),
C keys in one chunk, H heads, D width (each head sees D / H channels).

Every block computes ``x + f(LN(x))``. Cross-attention can walk its keys in chunks
and merge them exactly (flash-attention style), so memory grows with ``L * C``
rather than ``L * M``; with ``checkpoint`` each chunk is recomputed in backward
instead of keeping its keys, values and scores.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gperceiver.nn import window_kernels

KeyValues = list[tuple[Tensor, Tensor]]  # per chunk: keys, values (B, H, C, D / H)


class SharedTokens(list):
    """Token space's K/V cache, ``[(n, n)]``, and the one buffer into which every
    read of it (:class:`_TokenAttention`, e.g. each encoder iteration) adds its
    gradient of ``n`` in place: the last backward to run returns the sum, the
    others none, so autograd never adds (B, M, D) gradients out of place (at 500k
    markers x batch 8 each such sum was a fresh 1 GB tensor)."""

    def __init__(self, n: Tensor):
        super().__init__([(n, n)])
        self.grad: Tensor | None = None
        self.readers = self.seen = 0

    def add_grad(self, like: Tensor) -> Tensor:
        """The buffer (uninitialised the first time: the first writer writes)."""
        if self.grad is None:
            self.grad = torch.empty_like(like)
        return self.grad

    def take_grad(self) -> Tensor | None:
        """Called once per backward of a reader: the sum after the last one."""
        self.seen += 1
        if self.seen < self.readers:
            return None
        grad, self.grad, self.seen = self.grad, None, 0
        return grad


# ``checkpoint=None`` (auto) recomputes in backward only when the tensor a layer
# reads holds at least this many floats (64 MiB); below it, keeping activations
# is cheap and recomputing them costs a third of a step (BENCHMARKS.md, Scale)
RECOMPUTE_MIN_FLOATS = 1 << 24
# the decoder's window layer keeps its activations (the normed tokens and the
# weights, ~1 (B, M, D) tensor) up to this many token floats (512 MiB): at 100k
# markers x batch 8 recomputing it cost about a tenth of the step and saved no
# peak memory (BENCHMARKS.md, Scale, session 10)
LOCAL_RECOMPUTE_MIN_FLOATS = 1 << 27
# token-space cross-attention keeps its weights (B x H x L x M floats per call)
# for backward up to this many (128 MiB), instead of recomputing its scores: at
# 10k markers x batch 8 that took a fifth off the encoder's attention (BENCHMARKS
# .md, Scale, session 11); above it (500k markers: 512 MiB a call) it recomputes
KEEP_WEIGHTS_MAX_FLOATS = 1 << 25
# neighbours gathered per window chunk (B x chunk targets x 2 * window x D
# floats, 4 MiB): a chunk that stays in cache beats 2,048 targets a row, whose
# gathered neighbours (134 MB at batch 8) went out to memory and back
WINDOW_CHUNK_FLOATS = 1 << 20


def recompute(
    checkpoint: bool | None, x: Tensor, min_floats: int | None = None
) -> bool:
    """Whether a layer reading ``x`` recomputes in backward: never without
    gradients, else ``checkpoint``, or (None) when ``x`` holds at least
    ``min_floats`` (default ``RECOMPUTE_MIN_FLOATS``) floats."""
    if not torch.is_grad_enabled():
        return False
    if checkpoint is not None:
        return checkpoint
    return x.numel() >= (RECOMPUTE_MIN_FLOATS if min_floats is None else min_floats)


def init_weights(module: nn.Module) -> None:
    """Truncated normal (std 0.02) weights and zero biases for linears and tables."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def standardize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``x`` (..., D) layer-normed without the norm's affine map (mean 0 and
    variance 1 per row): what token-space attention reads, its ``LN``'s scale
    and shift folded into queries and outputs, so the encoder and the decoder's
    window share one such tensor. (Unit scale and zero shift passed explicitly:
    torch's CPU kernel without them measured slower.)"""
    d = x.shape[-1]
    return F.layer_norm(x, (d,), x.new_ones(d), x.new_zeros(d), eps)


def _fold_norm(norm: nn.LayerNorm, mixed: Tensor, read: Tensor | float) -> Tensor:
    """``sum_m a_m LN(x_m)`` from ``mixed = sum_m a_m standardize(x_m)`` (..., D):
    ``gamma * mixed + beta * sum_m a_m``, the weights' sum ``read`` 1, or 0 for a
    query that read nothing."""
    return torch.addcmul(norm.bias * read, mixed, norm.weight)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, S, D) -> (B, H, S, D / H)."""
    b, s, d = x.shape
    return x.view(b, s, heads, d // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(B, H, S, D / H) -> (B, S, D)."""
    b, h, s, k = x.shape
    return x.transpose(1, 2).reshape(b, s, h * k)


def _whole(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float
) -> Tensor:
    """Attention over all keys at once: (B, H, L, V), scores ``scale * q . k``."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _partial(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk's unnormalised attention: numerator, denominator and score shift.

    Returns ``sum_c e_c v_c`` (B, H, L, V), ``sum_c e_c`` (B, H, L, 1) and the
    shift ``s`` (B, H, L, 1) with ``e_c = exp(score_c - s)``, ``score_c = scale *
    q . k_c``; ``s`` is the chunk's
    largest score, ``-inf`` where every key of the chunk is masked. ``_merge`` then
    rescales the chunks to a common shift, which gives exact softmax attention.
    """
    scores = q @ k.transpose(-1, -2)  # (B, H, L, C)
    if scale != 1.0:
        scores = scores * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    shift = scores.detach().amax(-1, keepdim=True)  # softmax is shift invariant
    weights = torch.exp(scores - torch.where(shift.isfinite(), shift, 0.0))
    return weights @ v, weights.sum(-1, keepdim=True), shift


def _merge(parts: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """Combine ``_partial`` results of all chunks into softmax attention.

    A query whose keys are all masked gets zeros, as
    ``scaled_dot_product_attention`` gives.
    """
    return _merge_stats(parts)[0]


def _merge_stats(
    parts: list[tuple[Tensor, Tensor, Tensor]],
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_merge`, and the common shift ``s`` and denominator (B, H, L, 1)
    with which every weight is ``exp(score - s) / den`` (den 1 for a query
    without keys)."""
    top = torch.stack([shift for _, _, shift in parts]).amax(0)  # (B, H, L, 1)
    top = torch.where(top.isfinite(), top, 0.0)
    num = den = 0.0
    for chunk_num, chunk_den, shift in parts:
        scale = torch.exp(shift - top)
        num = num + chunk_num * scale
        den = den + chunk_den * scale
    den = torch.where(den > 0, den, 1.0)
    return num / den, top, den


class FeedForward(nn.Module):
    """``x + W2 GELU(W1 LN(x))`` with hidden width ``mult * D``."""

    def __init__(self, width: int, mult: int = 2, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.net = nn.Sequential(
            nn.Linear(width, mult * width),
            nn.GELU(),
            nn.Linear(mult * width, width),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(self.norm(x))


class SelfAttention(nn.Module):
    """``x + W_o MHA(LN(x))`` over the sequence of ``x`` (B, S, D)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.to_qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (
            _split_heads(t, self.heads)
            for t in self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        )
        attended = _merge_heads(F.scaled_dot_product_attention(q, k, v))
        return x + self.drop(self.out(attended))


class CrossAttention(nn.Module):
    """Queries (B, L, D) attend to tokens (B, M, D): ``q + W_o MHA(LN(q), LN(x))``.

    ``chunk_size`` (None: all at once) sets how many tokens one chunk holds;
    ``checkpoint`` recomputes each chunk's LN, K/V projection and scores in
    backward, so training keeps little more than the tokens themselves.

    ``token_space`` (None: auto, on with one head) computes the same attention
    without projecting the tokens: ``q . (W_k n + b_k) = (W_k^T q) . n`` plus a
    per-query constant the softmax drops, and ``sum_m a_m (W_v n_m + b_v) = W_v
    (sum_m a_m n_m) + b_v`` for normed tokens ``n``. Queries move to the tokens'
    D channels (B, H, L, D) instead of every token to K and V (B, M, 2D): per
    token ``4 H L D`` instead of ``4 D^2 + 4 L D`` multiply-adds, and the K/V
    cache shrinks to the normed tokens (B, M, D). Its backward
    (:class:`_TokenAttention`) recomputes the scores chunk by chunk whatever
    ``checkpoint`` says: nothing of size L x M is ever kept.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        dropout: float = 0.0,
        chunk_size: int | None = None,
        checkpoint: bool | None = False,
        token_space: bool | None = None,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
        self.heads = heads
        self.chunk_size = chunk_size
        self.checkpoint = checkpoint
        self.token_space = heads == 1 if token_space is None else token_space
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width)
        self.to_kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def project_kv(
        self, tokens: Tensor, standardized: Tensor | None = None
    ) -> KeyValues:
        """Keys and values of tokens (B, M, D), chunk by chunk, for reuse.

        Pass the result as ``kv`` (with the same ``tokens``) to every call sharing
        these weights and tokens. With ``checkpoint`` and gradients on, the cache
        holds no autograd graph: each chunk's backward recomputes its keys and
        values from the tokens, so the cache is freed after the forward pass
        instead of living (with its gradients) until the end of backward.

        In token space the cache is the standardized tokens alone (``norm_kv``'s
        scale and shift are folded into queries and output), ``[(n, n)]`` with
        ``n`` (B, 1, M, D) kept with its graph, the same for every token-space
        layer: ``standardized`` (B, M, D), :func:`standardize` of the tokens, when
        the caller has it already.
        """
        if self.token_space:
            n = standardize(tokens) if standardized is None else standardized
            return SharedTokens(n[:, None])
        if recompute(self.checkpoint, tokens):
            with torch.no_grad():
                return [self._kv(x) for x in self._chunks(tokens, 1)]
        return [self._kv(x) for x in self._chunks(tokens, 1)]

    def forward(
        self,
        queries: Tensor,
        tokens: Tensor,
        mask: Tensor | None = None,
        kv: KeyValues | None = None,
    ) -> Tensor:
        """Updated queries (B, L, D) after reading tokens (B, M, D).

        ``kv = project_kv(tokens)`` reuses keys and values computed once.
        ``mask`` (B, M) bool is True for tokens to attend to; a query row with no
        valid token gets no update.
        """
        q, scale = self._query(queries)  # (B, H, L, D / H or D)
        if self.token_space:
            cache = kv or self.project_kv(tokens)
            normed = cache[0][0]  # (B, 1, M, D)
            q = q * self.norm_kv.weight  # q . LN(x) = (gamma q) . n + q . beta
            valid = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, M)
            chunk = self.chunk_size or tokens.shape[1]
            keep = self.checkpoint is not True and (
                q.shape[:3].numel() * normed.shape[2] <= KEEP_WEIGHTS_MAX_FLOATS
            )
            shared = cache if isinstance(cache, SharedTokens) else None
            mixed = _TokenAttention.apply(q, normed, valid, chunk, keep, shared)
            read = (
                1.0 if mask is None else mask.any(-1).to(q.dtype)[:, None, None, None]
            )
            attended = self._values(_fold_norm(self.norm_kv, mixed, read), mask)
            return queries + self.drop(self.out(_merge_heads(attended)))
        chunks = self._chunks(tokens, 1)
        if mask is None:
            masks = [None] * len(chunks)
        else:
            masks = self._chunks(mask[:, None, None, :], -1)  # (B, 1, 1, C) each
        recomputing = recompute(self.checkpoint, tokens)
        if kv is not None and recomputing:
            kv_params = [*self.norm_kv.parameters(), *self.to_kv.parameters()]
            parts = [
                _CachedChunk.apply(
                    self, q, x, k.detach(), v.detach(), m, scale, *kv_params
                )
                for x, (k, v), m in zip(chunks, kv, masks, strict=True)
            ]
            attended = _merge(parts)
        else:
            whole = len(chunks) == 1
            attend = partial(_whole if whole else _partial, scale=scale)
            items = kv if kv is not None else [(x,) for x in chunks]
            if kv is None:
                attend = partial(self._projected, attend)
            if recomputing:
                attend = partial(checkpoint, attend, use_reentrant=False)
            parts = [attend(q, *item, m) for item, m in zip(items, masks, strict=True)]
            attended = parts[0] if whole else _merge(parts)
        return queries + self.drop(self.out(_merge_heads(attended)))

    def _query(self, queries: Tensor) -> tuple[Tensor, float]:
        """Per-head queries (B, H, L, D / H) and the score scale; in token space
        the queries times ``W_k`` and the scale, (B, H, L, D), and scale 1."""
        q = _split_heads(self.to_q(self.norm_q(queries)), self.heads)
        scale = q.shape[-1] ** -0.5
        if not self.token_space:
            return q, scale
        h, c = self.heads, q.shape[-1]
        w_k = self.to_kv.weight[: h * c].view(h, c, h * c)  # (H, D/H, D)
        return torch.einsum("bhlc,hcd->bhld", q * scale, w_k), 1.0

    def _values(self, mixed: Tensor, mask: Tensor | None) -> Tensor:
        """Token space: attention-weighted normed tokens (B, H, L, D) -> the
        weighted values ``W_v mixed + b_v`` (B, H, L, D / H); a row whose tokens
        are all masked stays zero."""
        h, d = self.heads, mixed.shape[-1]
        w_v = self.to_kv.weight[d:].view(h, d // h, d)  # (H, D/H, D)
        b_v = self.to_kv.bias[d:].view(h, 1, d // h)
        values = torch.einsum("bhld,hcd->bhlc", mixed, w_v)
        if mask is None:
            return values + b_v
        return values + b_v * mask.any(-1).to(values.dtype)[:, None, None, None]

    def _kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens (B, C, D) -> keys, values (B, H, C, D / H) (projected keys and
        values; token space reads :func:`standardize` of the tokens instead).

        Functional calls rather than the submodules: :class:`_CachedChunk` runs
        this inside backward, where module hooks (e.g. profilers') must not fire.
        """
        norm = self.norm_kv
        shape = norm.normalized_shape
        normed = F.layer_norm(x, shape, norm.weight, norm.bias, norm.eps)
        k, v = F.linear(normed, self.to_kv.weight, self.to_kv.bias).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def _projected(self, attend, q: Tensor, x: Tensor, mask: Tensor | None):
        return attend(q, *self._kv(x), mask)

    def _chunks(self, x: Tensor, dim: int) -> list[Tensor]:
        # split() gives views with a single backward node that concatenates grads
        return list(x.split(self.chunk_size, dim)) if self.chunk_size else [x]


class _CachedChunk(torch.autograd.Function):
    """``_partial`` attention of one chunk from cached keys and values.

    Forward reads the cache (computed once, without a graph); backward
    recomputes the chunk's keys and values from its tokens and differentiates
    through them, so gradients reach the tokens and the K/V projection as if
    the cache had been built with autograd.
    """

    @staticmethod
    def forward(ctx, layer, q, x, k, v, mask, scale, *params):
        ctx.layer, ctx.mask, ctx.scale = layer, mask, scale
        ctx.save_for_backward(q, x)  # x is a view of the tokens: no copy
        return _partial(q, k, v, mask, scale)

    @staticmethod
    def backward(ctx, grad_num, grad_den, grad_shift):
        q, x = ctx.saved_tensors
        layer = ctx.layer
        params = [*layer.norm_kv.parameters(), *layer.to_kv.parameters()]
        with torch.enable_grad():
            q, x = q.detach().requires_grad_(), x.detach().requires_grad_()
            num, den, _ = _partial(q, *layer._kv(x), ctx.mask, ctx.scale)
            grads = torch.autograd.grad(
                (num, den), (q, x, *params), (grad_num, grad_den), allow_unused=True
            )
        # (in token space the K/V weights get their gradient outside this chunk)
        return (None, grads[0], grads[1], None, None, None, None, *grads[2:])


class _TokenAttention(torch.autograd.Function):
    """Softmax attention of token-space queries over normed tokens, in chunks.

    ``q`` (B, H, L, D) queries moved through ``W_k`` and scaled, ``normed``
    (B, 1, M, D) the normed tokens (keys and values at once), ``valid`` (B, 1, 1,
    M) bool or None, ``chunk`` tokens per block. Returns ``sum_m a_m n_m`` (B, H,
    L, D), ``a = softmax(q . n)`` (zeros for a query without valid tokens).

    Forward merges the chunks exactly (:func:`_merge_stats`). With ``keep`` it
    keeps the weights ``a`` (B x HL x M floats) for backward; without, only the
    shift and denominator per query, and backward recomputes each chunk's scores
    from them (nothing of size L x M outlives a chunk). Either way backward
    writes the tokens' gradient chunk by chunk into one (B, 1, M, D) tensor in
    place, both of its uses (key and value) summed there. Scores are laid out
    tokens-major, (B, C, H * L), which runs faster on a CPU than (B, H * L, C).
    """

    @staticmethod
    def forward(ctx, q, normed, valid, chunk, keep=False, shared=None):
        b, h, length, d = q.shape
        ctx.shared = shared
        if shared is not None:
            shared.readers += 1
        rows = q.reshape(b, h * length, d)  # heads x queries as one dimension
        parts = []
        for start in range(0, normed.shape[2], chunk):
            part = slice(start, start + chunk)
            mask = None if valid is None else valid[:, 0, 0, part, None]
            parts.append(_token_partial(rows, normed[:, 0, part], mask))
        mixed, top, den = _merge_stats([p[:3] for p in parts])
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


class CrossBlock(nn.Module):
    """Cross-attention then feed-forward; arguments as :class:`CrossAttention`."""

    def __init__(
        self,
        width: int,
        heads: int,
        ff_mult: int = 2,
        dropout: float = 0.0,
        chunk_size: int | None = None,
        checkpoint: bool | None = False,
    ):
        super().__init__()
        self.attn = CrossAttention(width, heads, dropout, chunk_size, checkpoint)
        self.ff = FeedForward(width, ff_mult, dropout)

    def forward(
        self,
        queries: Tensor,
        tokens: Tensor,
        mask: Tensor | None = None,
        kv: KeyValues | None = None,
    ) -> Tensor:
        return self.ff(self.attn(queries, tokens, mask, kv))


class SelfBlock(nn.Module):
    """Self-attention then feed-forward."""

    def __init__(self, width: int, heads: int, ff_mult: int = 2, dropout: float = 0.0):
        super().__init__()
        self.attn = SelfAttention(width, heads, dropout)
        self.ff = FeedForward(width, ff_mult, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(self.attn(x))


class LocalAttention(nn.Module):
    """Each query attends to the ``window`` tokens on either side of its own position.

    Queries (B, T, D) sit at ``centers`` (B, T), positions in the token sequence
    (B, S, D); the centre token itself is skipped. Keys carry a learned embedding of
    their offset, so the query knows which neighbour is adjacent. Targets are
    processed ``target_chunk`` at a time (None: as many as fill
    ``WINDOW_CHUNK_FLOATS``) and their neighbours gathered again in backward, so
    besides the normed tokens (B, S, D) and the weights (B, T, H, 2 * window)
    memory is ``B * target_chunk * 2 * window * D``, whatever the number of
    targets. ``checkpoint`` is kept for the callers, which recompute the
    whole layer (:meth:`MaskedMarkerModel._run`).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        window: int,
        dropout: float = 0.0,
        target_chunk: int | None = None,
        checkpoint: bool | None = False,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads, self.window = heads, window
        self.target_chunk, self.checkpoint = target_chunk, checkpoint
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width)
        self.to_kv = nn.Linear(width, 2 * width)
        self.offset = nn.Embedding(2 * window, width)
        self.out = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        offsets = torch.cat([torch.arange(-window, 0), torch.arange(1, window + 1)])
        self.register_buffer("offsets", offsets, persistent=False)  # (W,)

    def forward(
        self, queries: Tensor, tokens: Tensor, centers: Tensor, standardized=False
    ) -> Tensor:
        """Queries (B, T, D) after reading their neighbours in tokens (B, S, D),
        or (``standardized``) in :func:`standardize` of them.

        Attention runs in token space: ``q . (W_k x + b_k)`` is ``(W_k^T q) . x``
        plus a per-head constant that the softmax drops, and ``sum_w a_w (W_v x_w +
        b_v) = W_v (sum_w a_w x_w) + b_v sum_w a_w``. So only the D-wide normed
        tokens are gathered (not 2D-wide keys and values), and no token outside
        the windows is ever projected; :class:`_WindowAttention` gathers them
        ``target_chunk`` targets at a time and again in backward instead of
        keeping them.
        """
        b, t, d = queries.shape
        s, h = tokens.shape[1], self.heads
        c = d // h
        # LN(x) = gamma n + beta for n = standardize(x): gamma moves to the
        # queries, beta to the output (a per-query constant in the scores); the
        # K/V maps are applied per target
        normed = tokens if standardized else standardize(tokens)  # (B, S, D)
        w_k, w_v = self.to_kv.weight.view(2, h, c, d).unbind(0)  # (H, D/H, D)
        b_v = self.to_kv.bias.view(2, h, c)[1]  # (H, D/H)
        positions = centers[..., None] + self.offsets  # (B, T, W)
        inside = (positions >= 0) & (positions < s)
        rows = torch.arange(b, device=normed.device)[:, None, None]
        index = (rows * s + positions.clamp(0, s - 1)).flatten()  # into (B * S)
        q = self.to_q(self.norm_q(queries)).unflatten(-1, (h, c)) * c**-0.5
        q_tokens = torch.einsum("bthc,hcd->bthd", q, w_k) * self.norm_kv.weight
        offsets = self.offset.weight.view(-1, h, c)  # (W, H, D/H)
        bias = torch.einsum("bthc,whc->bthw", q, offsets)  # (B, T, H, W)
        bias = bias.masked_fill(~inside[:, :, None, :], -torch.inf)
        width = len(self.offsets) * d  # floats of one target's neighbours
        chunk = self.target_chunk or max(1, WINDOW_CHUNK_FLOATS // (b * width))
        lone = s < 2  # then no target has a neighbour
        mixed = _WindowAttention.apply(
            q_tokens, bias, normed.reshape(b * s, d), index, chunk, lone
        )  # (B, T, H, D)
        # the weights sum to 1, or to 0 for a lone token without neighbours
        read = inside.any(-1).to(mixed.dtype)[:, :, None, None]  # (B, T, 1, 1)
        mixed = _fold_norm(self.norm_kv, mixed, read)  # (B, T, H, D)
        attended = torch.einsum("bthd,hcd->bthc", mixed, w_v) + read * b_v
        return queries + self.drop(self.out(attended.reshape(b, t, d)))


class _WindowAttention(torch.autograd.Function):
    """Softmax attention of token-space queries over gathered neighbours.

    ``q`` (B, T, H, D) queries already moved through ``W_k`` and scaled, ``bias``
    (B, T, H, W) score offsets (``-inf`` for neighbours outside the sequence),
    ``normed`` (B * S, D) the normed tokens and ``index`` (B * T * W,) the row of
    each target's neighbours in it. Returns ``sum_w a_w n_w`` (B, T, H, D) with
    ``a = softmax(q . n_w + bias)``; with ``lone`` (a sequence of one token,
    every neighbour outside) the weights are zeros.

    The neighbours (B, T, W, D), the largest tensor here, exist for ``chunk``
    targets at a time and are gathered again in backward rather than kept;
    gradients for all chunks accumulate into one (B * S, D) buffer by row.
    """

    @staticmethod
    def forward(ctx, q, bias, normed, index, chunk, lone=False):
        b, t, h, d = q.shape
        w = bias.shape[-1]
        ctx.fused = window_kernels.available(q, bias, normed)
        if ctx.fused:  # CPU: numba kernels read the neighbours in place
            q, normed = q.reshape(b * t, h, d).contiguous(), normed.contiguous()
            index = index.view(b * t, w)
            scores = window_kernels.window_scores(
                q, bias.reshape(b * t, h, w).contiguous(), normed, index
            )
            a = scores.softmax(-1)  # (B * T, H, W)
            weights = a.nan_to_num_() if lone else a
            ctx.per_row = t
            ctx.save_for_backward(q, normed, index, weights)
            return window_kernels.window_mix(weights, normed, index).view(b, t, h, d)
        index = index.view(b, t, w)
        mixed, weights = [], []
        for start in range(0, t, chunk):
            part = slice(start, start + chunk)
            near = _gather(normed, index[:, part])  # (B, T', W, D)
            scores = q[:, part] @ near.transpose(-1, -2) + bias[:, part]
            a = scores.softmax(-1)  # (B, T', H, W)
            weights.append(a.nan_to_num_() if lone else a)
            mixed.append(weights[-1] @ near)  # (B, T', H, D)
        mixed, weights = torch.cat(mixed, 1), torch.cat(weights, 1)
        ctx.chunk = chunk
        ctx.save_for_backward(q, normed, index, weights)
        return mixed

    @staticmethod
    def backward(ctx, grad_mixed):
        q, normed, index, weights = ctx.saved_tensors
        if ctx.fused:
            shape = grad_mixed.shape
            grad_q, grad_bias, grad_normed = window_kernels.window_backward(
                q,
                normed,
                index,
                weights,
                grad_mixed.reshape(q.shape).contiguous(),
                ctx.per_row,
            )
            grad_bias = grad_bias.view(*shape[:3], -1)
            return grad_q.view(shape), grad_bias, grad_normed, None, None, None
        grad_q, grad_bias = [], []
        grad_normed = torch.zeros_like(normed)
        for start in range(0, q.shape[1], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            near = _gather(normed, index[:, part])  # (B, T', W, D)
            a, g = weights[:, part], grad_mixed[:, part]
            grad_a = g @ near.transpose(-1, -2)  # (B, T', H, W)
            grad_s = a * (grad_a - (grad_a * a).sum(-1, keepdim=True))
            grad_bias.append(grad_s)
            grad_q.append(grad_s @ near)  # (B, T', H, D)
            # both uses of the neighbours in one product: [s; a]^T [q; g]
            left = torch.cat([grad_s, a], 2).transpose(-1, -2)  # (B, T', W, 2H)
            right = torch.cat([q[:, part], g], 2)  # (B, T', 2H, D)
            grad_near = left @ right  # (B, T', W, D)
            rows = index[:, part].flatten()
            grad_normed.index_add_(0, rows, grad_near.view(-1, grad_near.shape[-1]))
        grad_q, grad_bias = torch.cat(grad_q, 1), torch.cat(grad_bias, 1)
        return grad_q, grad_bias, grad_normed, None, None, None


def _gather(normed: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, T, W) of ``normed`` (N, D) -> (B, T, W, D), row copies."""
    return normed.index_select(0, index.flatten()).view(*index.shape, -1)
