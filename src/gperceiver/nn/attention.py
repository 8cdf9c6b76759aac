"""Pre-LN residual attention blocks whose heads split the width.

Self- and cross-attention share their projections, chunking and masking here;
cross-attention with one head reads its tokens in token space
(:mod:`gperceiver.nn.token_space`), and the decoder's window lives in
:mod:`gperceiver.nn.window_attention`.

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

from gperceiver.nn.dropout import Dropout
from gperceiver.nn.token_space import (
    SharedTokens,
    TokenAttention,
    fold_norm,
    merge_stats,
    standardize,
)

KeyValues = list[tuple[Tensor, Tensor]]  # per chunk: keys, values (B, H, C, D / H)


# ``checkpoint=None`` (auto) recomputes in backward only when the tensor a layer
# reads holds at least this many floats (64 MiB); below it, keeping activations
# is cheap and recomputing them costs a third of a step (BENCHMARKS.md, Scale)
RECOMPUTE_MIN_FLOATS = 1 << 24
# token-space cross-attention keeps its weights (B x H x L x M floats per call)
# for backward up to this many (128 MiB), instead of recomputing its scores: at
# 10k markers x batch 8 that took a fifth off the encoder's attention (BENCHMARKS
# .md, Scale, session 11); above it (500k markers: 512 MiB a call) it recomputes
KEEP_WEIGHTS_MAX_FLOATS = 1 << 25


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
    return merge_stats(parts)[0]


class FeedForward(nn.Module):
    """``x + W2 GELU(W1 LN(x))`` with hidden width ``mult * D``."""

    def __init__(self, width: int, mult: int = 2, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.net = nn.Sequential(
            nn.Linear(width, mult * width),
            nn.GELU(),
            nn.Linear(mult * width, width),
            Dropout(dropout),
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
        self.drop = Dropout(dropout)

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
    (:class:`TokenAttention`) recomputes the scores chunk by chunk whatever
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
        self.drop = Dropout(dropout)

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
            return SharedTokens(n)
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
            mixed = TokenAttention.apply(q, normed, valid, chunk, keep, shared)
            read = (
                1.0 if mask is None else mask.any(-1).to(q.dtype)[:, None, None, None]
            )
            attended = self._values(fold_norm(self.norm_kv, mixed, read), mask)
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
