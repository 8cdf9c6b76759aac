"""The decoder's window: each target reads its neighbouring tokens.

Linkage is local, so a target query reads the ``window`` standardized tokens on
either side of its own position besides the latents. Like the encoder it reads
them in token space (:mod:`gperceiver.nn.token_space`); on the CPU the reads are
fused numba kernels (:mod:`gperceiver.nn.window_kernels`), elsewhere torch ops.

Shape letters: B batch, T targets, S tokens in the sequence, H heads, W
neighbours of a target, D width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gperceiver.nn import window_kernels
from gperceiver.nn.dropout import Dropout
from gperceiver.nn.token_space import SharedTokens, standardize

# the decoder's window layer keeps its activations (the normed tokens and the
# weights, ~1 (B, M, D) tensor) up to this many token floats (512 MiB): at 100k
# markers x batch 8 recomputing it cost about a tenth of the step and saved no
# peak memory (BENCHMARKS.md, Scale, session 10)
LOCAL_RECOMPUTE_MIN_FLOATS = 1 << 27
# neighbours gathered per window chunk (B x chunk targets x 2 * window x D
# floats, 4 MiB): a chunk that stays in cache beats 2,048 targets a row, whose
# gathered neighbours (134 MB at batch 8) went out to memory and back
WINDOW_CHUNK_FLOATS = 1 << 20


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
        self.drop = Dropout(dropout)
        offsets = torch.cat([torch.arange(-window, 0), torch.arange(1, window + 1)])
        self.register_buffer("offsets", offsets, persistent=False)  # (W,)

    def forward(
        self,
        queries: Tensor,
        tokens: Tensor,
        centers: Tensor,
        standardized: bool = False,
    ) -> Tensor:
        """Queries (B, T, D) after reading their neighbours in tokens (B, S, D),
        or (``standardized``) in :func:`standardize` of them. When those are a
        :class:`~gperceiver.nn.token_space.SharedTokens`' tensor, the tokens'
        gradient is added into the cache's buffer.

        Attention runs in token space: ``q . (W_k x + b_k)`` is ``(W_k^T q) . x``
        plus a per-head constant that the softmax drops, and ``sum_w a_w (W_v x_w +
        b_v) = W_v (sum_w a_w x_w) + b_v sum_w a_w``. So only the D-wide normed
        tokens are read (not 2D-wide keys and values), and no token outside
        the windows is ever projected; :class:`_WindowAttention` reads them in
        place on the CPU (numba kernels), elsewhere gathers them ``target_chunk``
        targets at a time and again in backward instead of keeping them.
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
        gamma, beta = self.norm_kv.weight, self.norm_kv.bias  # (D,)
        q = self.to_q(self.norm_q(queries)).unflatten(-1, (h, c)) * c**-0.5
        # gamma scales the (H, D/H, D) maps, not the (B, T, H, D) tensors
        q_tokens = torch.einsum("bthc,hcd->bthd", q, w_k * gamma)
        offsets = self.offset.weight.view(-1, h, c)  # (W, H, D/H)
        bias = torch.einsum("bthc,whc->bthw", q, offsets)  # (B, T, H, W)
        width = len(self.offsets) * d  # floats of one target's neighbours
        chunk = self.target_chunk or max(1, WINDOW_CHUNK_FLOATS // (b * width))
        lone = s < 2  # then no target has a neighbour
        shared = SharedTokens.owner(normed) if standardized else None
        mixed = _WindowAttention.apply(
            q_tokens, bias, inside, normed.reshape(b * s, d), index, chunk, lone, shared
        )  # (B, T, H, D)
        # sum_w a_w LN(x_w) = gamma * mixed + beta * read, where the weights sum
        # to read: 1, or 0 for a lone token without neighbours; then W_v
        read = inside.any(-1).to(mixed.dtype)[:, :, None, None]  # (B, T, 1, 1)
        shift = torch.einsum("d,hcd->hc", beta, w_v) + b_v  # (H, D/H)
        attended = torch.einsum("bthd,hcd->bthc", mixed, w_v * gamma) + read * shift
        return queries + self.drop(self.out(attended.reshape(b, t, d)))


class _WindowAttention(torch.autograd.Function):
    """Softmax attention of token-space queries over gathered neighbours.

    ``q`` (B, T, H, D) queries already moved through ``W_k`` and scaled, ``bias``
    (B, T, H, W) score offsets, ``inside`` (B, T, W) whether each neighbour is in
    the sequence (the others are not read), ``normed`` (B * S, D) the normed
    tokens and ``index`` (B * T * W,) the row of each target's neighbours in it.
    Returns ``sum_w a_w n_w`` (B, T, H, D) with ``a = softmax(q . n_w + bias)``
    over the neighbours inside; with ``lone`` (a sequence of one token, every
    neighbour outside) the weights are zeros. On the CPU the kernels take and
    give the per-target tensors head-major, (H, B * T, ...), the layout of the
    einsums around this layer, so none is copied.

    The neighbours (B, T, W, D), the largest tensor here, exist for ``chunk``
    targets at a time and are gathered again in backward rather than kept;
    gradients for all chunks accumulate into one (B * S, D) buffer by row. With
    ``shared`` (the :class:`~gperceiver.nn.token_space.SharedTokens` whose
    standardized tokens ``normed`` views) the CPU kernels add the tokens'
    gradient into its buffer, as the encoder's reads do.
    """

    @staticmethod
    def forward(ctx, q, bias, inside, normed, index, chunk, lone=False, shared=None):
        b, t, h, d = q.shape
        w = bias.shape[-1]
        ctx.fused = window_kernels.available(q, bias, normed)
        ctx.shared = shared if ctx.fused else None
        if ctx.shared is not None and torch._C._current_graph_task_id() == -1:
            # a reader once: not again when checkpointing recomputes this
            # forward inside backward (the first forward's context runs backward)
            ctx.shared.readers += 1
        if ctx.fused:  # CPU: numba kernels read the neighbours in place
            normed, index = normed.contiguous(), index.view(b * t, w)
            q = _heads_first(q)
            scores = window_kernels.window_scores(
                q, _heads_first(bias), inside.reshape(b * t, w), normed, index
            )
            a = scores.softmax(-1)  # (H, B * T, W)
            weights = a.nan_to_num_() if lone else a
            ctx.per_row = t
            ctx.save_for_backward(q, normed, index, weights)
            mixed = window_kernels.window_mix(weights, normed, index)
            return _heads_last(mixed, b)
        bias = bias.masked_fill(~inside[:, :, None, :], -torch.inf)
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
            b, shared = grad_mixed.shape[0], ctx.shared
            if shared is None:
                grad_normed, zero = torch.empty_like(normed), True
            else:  # add into the buffer every read of the tokens shares
                zero = shared.grad is None
                grad_normed = shared.add_grad(shared[0][0]).view(normed.shape)
            grad_q, grad_bias = window_kernels.window_backward(
                q,
                normed,
                index,
                weights,
                _heads_first(grad_mixed),
                ctx.per_row,
                grad_normed,
                zero,
            )
            if shared is not None:
                grad_normed = shared.take_grad()  # None unless the last reader
                if grad_normed is not None:
                    grad_normed = grad_normed.view(normed.shape)
            grads = _heads_last(grad_q, b), _heads_last(grad_bias, b)
            return *grads, None, grad_normed, None, None, None, None
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
        return grad_q, grad_bias, None, grad_normed, None, None, None, None


def _heads_first(x: Tensor) -> Tensor:
    """(B, T, H, K) -> contiguous (H, B * T, K); no copy when ``x`` is already
    laid out head-major (as ``einsum("bthc,hc...")`` returns it)."""
    b, t, h, k = x.shape
    return x.permute(2, 0, 1, 3).reshape(h, b * t, k).contiguous()


def _heads_last(x: Tensor, b: int) -> Tensor:
    """(H, B * T, K) -> a (B, T, H, K) view."""
    h, n, k = x.shape
    return x.view(h, b, n // b, k).permute(1, 2, 0, 3)


def _gather(normed: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, T, W) of ``normed`` (N, D) -> (B, T, W, D), row copies."""
    return normed.index_select(0, index.flatten()).view(*index.shape, -1)
