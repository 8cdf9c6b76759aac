"""Pre-LN residual attention blocks whose heads split the width.

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

KeyValues = list[tuple[Tensor, Tensor]]  # per chunk: keys, values (B, H, C, D / H)

# ``checkpoint=None`` (auto) recomputes in backward only when the tensor a layer
# reads holds at least this many floats (64 MiB); below it, keeping activations
# is cheap and recomputing them costs a third of a step (BENCHMARKS.md, Scale)
RECOMPUTE_MIN_FLOATS = 1 << 24


def recompute(checkpoint: bool | None, x: Tensor) -> bool:
    """Whether a layer reading ``x`` recomputes in backward: never without
    gradients, else ``checkpoint``, or (None) when ``x`` is large."""
    if not torch.is_grad_enabled():
        return False
    return x.numel() >= RECOMPUTE_MIN_FLOATS if checkpoint is None else checkpoint


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


def _whole(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention over all keys at once: (B, H, L, D / H)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _partial(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk's unnormalised attention: numerator, denominator and score shift.

    Returns ``sum_c e_c v_c`` (B, H, L, D / H), ``sum_c e_c`` (B, H, L, 1) and the
    shift ``s`` (B, H, L, 1) with ``e_c = exp(score_c - s)``; ``s`` is the chunk's
    largest score, ``-inf`` where every key of the chunk is masked. ``_merge`` then
    rescales the chunks to a common shift, which gives exact softmax attention.
    """
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, L, C)
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
    top = torch.stack([shift for _, _, shift in parts]).amax(0)  # (B, H, L, 1)
    top = torch.where(top.isfinite(), top, 0.0)
    num = den = 0.0
    for chunk_num, chunk_den, shift in parts:
        scale = torch.exp(shift - top)
        num = num + chunk_num * scale
        den = den + chunk_den * scale
    return num / torch.where(den > 0, den, 1.0)


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
    """

    def __init__(
        self,
        width: int,
        heads: int,
        dropout: float = 0.0,
        chunk_size: int | None = None,
        checkpoint: bool | None = False,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
        self.heads = heads
        self.chunk_size = chunk_size
        self.checkpoint = checkpoint
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width)
        self.to_kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def project_kv(self, tokens: Tensor) -> KeyValues:
        """Keys and values of tokens (B, M, D), chunk by chunk, for reuse.

        Pass the result as ``kv`` (with the same ``tokens``) to every call sharing
        these weights and tokens. With ``checkpoint`` and gradients on, the cache
        holds no autograd graph: each chunk's backward recomputes its keys and
        values from the tokens, so the cache is freed after the forward pass
        instead of living (with its gradients) until the end of backward.
        """
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
        q = _split_heads(self.to_q(self.norm_q(queries)), self.heads)  # (B, H, L, D/H)
        chunks = self._chunks(tokens, 1)
        if mask is None:
            masks = [None] * len(chunks)
        else:
            masks = self._chunks(mask[:, None, None, :], -1)  # (B, 1, 1, C) each
        recomputing = recompute(self.checkpoint, tokens)
        if kv is not None and recomputing:
            params = [*self.norm_kv.parameters(), *self.to_kv.parameters()]
            parts = [
                _CachedChunk.apply(self, q, x, k.detach(), v.detach(), m, *params)
                for x, (k, v), m in zip(chunks, kv, masks, strict=True)
            ]
            attended = _merge(parts)
        else:
            whole = len(chunks) == 1
            attend = _whole if whole else _partial
            items = kv if kv is not None else [(x,) for x in chunks]
            if kv is None:
                attend = partial(self._projected, attend)
            if recomputing:
                attend = partial(checkpoint, attend, use_reentrant=False)
            parts = [attend(q, *item, m) for item, m in zip(items, masks, strict=True)]
            attended = parts[0] if whole else _merge(parts)
        return queries + self.drop(self.out(_merge_heads(attended)))

    def _kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens (B, C, D) -> keys, values (B, H, C, D / H).

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
    def forward(ctx, layer, q, x, k, v, mask, *params):
        ctx.layer, ctx.mask = layer, mask
        ctx.save_for_backward(q, x)  # x is a view of the tokens: no copy
        return _partial(q, k, v, mask)

    @staticmethod
    def backward(ctx, grad_num, grad_den, grad_shift):
        q, x = ctx.saved_tensors
        layer = ctx.layer
        params = [*layer.norm_kv.parameters(), *layer.to_kv.parameters()]
        with torch.enable_grad():
            q, x = q.detach().requires_grad_(), x.detach().requires_grad_()
            num, den, _ = _partial(q, *layer._kv(x), ctx.mask)
            grads = torch.autograd.grad(
                (num, den), (q, x, *params), (grad_num, grad_den)
            )
        return (None, grads[0], grads[1], None, None, None, *grads[2:])


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
    processed ``target_chunk`` at a time (recomputed in backward when
    ``checkpoint``), so besides the normed tokens (B, S, D) memory is
    ``B * target_chunk * 2 * window * D``, whatever the number of targets.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        window: int,
        dropout: float = 0.0,
        target_chunk: int = 2048,
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

    def forward(self, queries: Tensor, tokens: Tensor, centers: Tensor) -> Tensor:
        normed = self.norm_kv(tokens)  # (B, S, D); K/V maps are applied per target
        parts = []
        for start in range(0, queries.shape[1], self.target_chunk):
            part = slice(start, start + self.target_chunk)
            args = (queries[:, part], normed, centers[:, part])
            if recompute(self.checkpoint, normed):
                parts.append(checkpoint(self._attend, *args, use_reentrant=False))
            else:
                parts.append(self._attend(*args))
        return torch.cat(parts, dim=1)

    def _attend(self, queries: Tensor, normed: Tensor, centers: Tensor) -> Tensor:
        """One chunk of targets: queries (B, T', D), normed tokens (B, S, D),
        centres (B, T').

        Attention runs in token space: ``q . (W_k x + b_k)`` is ``(W_k^T q) . x``
        plus a per-head constant that the softmax drops, and ``sum_w a_w (W_v x_w +
        b_v) = W_v (sum_w a_w x_w) + b_v sum_w a_w``. So only the D-wide normed
        tokens are gathered (not 2D-wide keys and values), and no token outside
        the windows is ever projected.
        """
        b, t, d = queries.shape
        s, h = normed.shape[1], self.heads
        c = d // h
        w_k, w_v = self.to_kv.weight.view(2, h, c, d).unbind(0)  # (H, D/H, D)
        b_v = self.to_kv.bias.view(2, h, c)[1]  # (H, D/H)
        positions = centers[..., None] + self.offsets  # (B, T', W)
        inside = (positions >= 0) & (positions < s)
        rows = torch.arange(b, device=normed.device)[:, None, None]
        near = normed[rows, positions.clamp(0, s - 1)]  # (B, T', W, D), row gathers
        q = self.to_q(self.norm_q(queries)).unflatten(-1, (h, c)) * c**-0.5
        q_tokens = torch.einsum("bthc,hcd->bthd", q, w_k)  # (B, T', H, D)
        offsets = self.offset.weight.view(-1, h, c)  # (W, H, D/H)
        scores = q_tokens @ near.transpose(-1, -2)  # (B, T', H, W)
        scores = scores + torch.einsum("bthc,whc->bthw", q, offsets)
        scores = scores.masked_fill(~inside[:, :, None, :], -torch.inf)
        weights = torch.nan_to_num(scores.softmax(-1))  # a lone token: no neighbour
        mixed = weights @ near  # (B, T', H, D)
        attended = torch.einsum("bthd,hcd->bthc", mixed, w_v)
        attended = attended + weights.sum(-1, keepdim=True) * b_v
        return queries + self.drop(self.out(attended.reshape(b, t, d)))
