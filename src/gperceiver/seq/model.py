"""Causal DNA language model with interchangeable attention.

Shape letters: B batch, S sequence positions, D width, H heads, K = D / H channels per
head, F random features per head, C positions per chunk, V vocabulary.

Each block is pre-LN: ``x += conv(LN x)`` (causal depthwise convolution: local motifs
and relative position, so attention needs no positional encoding), ``x += attn(LN x)``,
``x += ff(LN x)``. ``attention`` picks the mixer:

- ``exact``: softmax attention through ``scaled_dot_product_attention`` (flash /
  memory-efficient kernels where available), memory O(S) on those kernels.
- ``performer``: FAVOR+ with positive orthogonal random features; the causal sum runs
  over chunks of ``chunk`` positions with prefix sums of the ``phi(k) v`` states, so
  no S x S matrix ever exists; segments of 1024 positions are recomputed in
  backward, so training keeps only q, k, v and one F x K state per segment.
- ``hierarchical``: exact attention inside windows of ``chunk`` positions plus exact
  attention to mean-pooled summaries of all earlier complete windows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_tensors, read_json, save_tensors, write_json
from ..io import InputError
from ..nn import init_weights
from .tokenizer import VOCAB

SEQ_FORMAT_VERSION = 1
ATTENTIONS = ("exact", "performer", "hierarchical")


@dataclass
class SeqConfig:
    width: int = 128  # D: small enough for ~10k tokens/s/core training on CPU
    depth: int = 4  # blocks; 4 x 128 = ~0.9 M parameters
    heads: int = 4  # K = 32 channels per head
    conv_kernel: int = 9  # causal depthwise conv: covers codon + short motifs
    ff_mult: int = 2  # feed-forward hidden = ff_mult * D (2: compute goes to depth)
    # exact | performer | hierarchical; performer trained fastest per quality on CPU
    # at 1k context (exact: ~3x slower per step on one shared core)
    attention: str = "performer"
    features: int = 64  # F random features per head (performer)
    chunk: int = 128  # C: prefix-sum chunk (performer) or window (hierarchical)
    context: int = 1024  # training window; evaluation slides windows of this length
    dropout: float = 0.0  # one pass over 16 Mb rarely overfits
    vocab_size: int = len(VOCAB)
    feature_seed: int = 0  # seed of the random projection (saved with the weights)

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"attention must be one of {', '.join(ATTENTIONS)}, "
                f"got {self.attention!r}"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must divide into {self.heads} heads")


def orthogonal_features(features: int, dim: int, generator: torch.Generator) -> Tensor:
    """(F, K) rows: blocks of orthonormal directions with chi(K)-distributed norms,
    so each row is marginally N(0, I) but rows within a block are orthogonal."""
    blocks, left = [], features
    while left > 0:
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        q = q * torch.sign(torch.diagonal(r))  # sign fix: Haar-distributed columns
        blocks.append(q.T[: min(left, dim)])
        left -= dim
    directions = torch.cat(blocks)
    norms = torch.randn(features, dim, generator=generator, dtype=torch.float64).norm(
        dim=1, keepdim=True
    )
    return (directions * norms).float()


def positive_features(x: Tensor, projection: Tensor, is_query: bool) -> Tensor:
    """FAVOR+ map phi: (B, H, S, K) -> (B, H, S, F), with
    ``E[phi(q) . phi(k)] = exp(q . k / sqrt(K))``.

    Queries subtract their own max (it cancels between numerator and denominator);
    keys subtract nothing data-dependent, so no future key changes a past output.
    The key exponent is bounded above by ``|w|^2 / 2`` and cannot overflow.
    """
    x = x * x.shape[-1] ** -0.25
    logits = x @ projection.T - 0.5 * (x * x).sum(-1, keepdim=True)
    if is_query:
        logits = logits - logits.amax(-1, keepdim=True).detach()
    return torch.exp(logits) * projection.shape[0] ** -0.5


def _favor_segment(
    q: Tensor, k: Tensor, v: Tensor, state: Tensor, projection: Tensor, chunk: int
) -> tuple[Tensor, Tensor]:
    """Causal FAVOR+ over one segment: raw q, k, v (B, H, S', K) and ``state`` (B, H,
    F, K + 1), the sum of ``phi(k)^T [v, 1]`` over all earlier positions ->
    (unnormalised output and normaliser (B, H, S', K + 1), state after the segment).

    Inside a chunk of C positions the C x C masked product is explicit; earlier
    chunks enter through an exclusive prefix sum of their states, shifted rather
    than subtracted so that not even rounding depends on the current chunk.
    """
    pq = positive_features(q, projection, is_query=True)
    pk = positive_features(k, projection, is_query=False)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], -1)
    b, h, s, f = pq.shape
    pad = (-s) % chunk  # zero features: padded keys add nothing
    if pad:
        pq, pk, v1 = (F.pad(t, (0, 0, 0, pad)) for t in (pq, pk, v1))
    n = (s + pad) // chunk
    qc, kc = pq.view(b, h, n, chunk, f), pk.view(b, h, n, chunk, f)
    vc = v1.view(b, h, n, chunk, -1)
    totals = (kc.transpose(-1, -2) @ vc).cumsum(2)  # (B, H, n, F, K + 1)
    before = state.unsqueeze(2) + F.pad(totals[:, :, :-1], (0, 0, 0, 0, 1, 0))
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    local = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (B,H,n,C,C)
    out = (qc @ before + local @ vc).reshape(b, h, n * chunk, -1)[:, :, :s]
    return out, state + totals[:, :, -1]


class _RecomputedSegment(torch.autograd.Function):
    """:func:`_favor_segment` that keeps only its inputs for backward and runs
    again there (``torch.utils.checkpoint`` kept the feature maps alive here)."""

    @staticmethod
    def forward(ctx, q, k, v, state, projection, chunk):
        ctx.save_for_backward(q, k, v, state, projection)
        ctx.chunk = chunk
        return _favor_segment(q, k, v, state, projection, chunk)

    @staticmethod
    def backward(ctx, grad_out, grad_state):
        *inputs, projection = ctx.saved_tensors
        inputs = [t.detach().requires_grad_() for t in inputs]
        with torch.enable_grad():
            out, state = _favor_segment(*inputs, projection, ctx.chunk)
        if grad_state is None:  # the last segment's state feeds nothing
            grad_state = torch.zeros_like(state)
        grads = torch.autograd.grad((out, state), inputs, (grad_out, grad_state))
        return (*grads, None, None)


def favor_causal(
    q: Tensor, k: Tensor, v: Tensor, projection: Tensor, chunk: int, segment: int = 1024
) -> Tensor:
    """Causal FAVOR+ attention: q, k, v (B, H, S, K), projection (F, K) -> (B, H, S, K).

    Position t sees keys 0..t. Segments of ``segment`` positions (rounded up to
    whole chunks) run in order, carrying the running ``phi(k)^T [v, 1]`` state.
    Under autograd each segment of a longer sequence is recomputed in backward
    from its raw q, k, v and incoming state, so training keeps only those and one
    (F, K + 1) state per segment: no feature map or C x C block outlives its
    segment, and memory beyond q, k, v stays that of one segment.
    """
    b, h, s, width = q.shape
    step = -(-max(segment, chunk) // chunk) * chunk
    state = q.new_zeros(b, h, projection.shape[0], width + 1)
    # one segment's intermediates are bounded by the segment: recompute only when
    # there are several (the default 1k training window runs at full speed)
    recompute = (
        s > step and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    )
    run = _RecomputedSegment.apply if recompute else _favor_segment
    parts = []
    # split, not slices: its backward concatenates the segments' gradients once,
    # where each slice's backward would fill a zero tensor of the full length
    for inputs in zip(*(t.split(step, 2) for t in (q, k, v)), strict=True):
        out, state = run(*inputs, state, projection, chunk)
        parts.append(out)
    out = torch.cat(parts, 2)
    return out[..., :-1] / out[..., -1:].clamp_min(1e-12)


def hierarchical_causal(q: Tensor, k: Tensor, v: Tensor, chunk: int) -> Tensor:
    """Exact causal attention within windows of ``chunk`` plus attention to the mean
    keys/values of every earlier complete window (one softmax over both)."""
    b, h, s, d = q.shape
    pad = (-s) % chunk
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    n = (s + pad) // chunk
    qc, kc, vc = (t.view(b, h, n, chunk, d) for t in (q, k, v))
    k_sum, v_sum = kc.mean(3), vc.mean(3)  # (B, H, n, K) window summaries
    scale = d**-0.5
    local = (qc @ kc.transpose(-1, -2)) * scale  # (B, H, n, C, C)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    local = local.masked_fill(~causal, float("-inf"))
    far = (qc @ k_sum.unsqueeze(2).transpose(-1, -2)) * scale  # (B, H, n, C, n)
    earlier = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)
    far = far.masked_fill(~earlier[None, None, :, None, :], float("-inf"))
    weights = torch.softmax(torch.cat([local, far], -1), -1)
    out = weights[..., :chunk] @ vc + weights[..., chunk:] @ v_sum.unsqueeze(2)
    return out.reshape(b, h, n * chunk, d)[:, :, :s]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: SeqConfig):
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)
        if config.attention == "performer":
            generator = torch.Generator().manual_seed(config.feature_seed)
            projection = orthogonal_features(
                config.features, config.width // config.heads, generator
            )
            self.register_buffer("projection", projection)

    def forward(self, x: Tensor) -> Tensor:
        """(B, S, D) -> (B, S, D); position t depends on positions <= t only."""
        b, s, d = x.shape
        heads = self.config.heads
        q, k, v = (
            t.view(b, s, heads, d // heads).transpose(1, 2)
            for t in self.qkv(x).chunk(3, -1)
        )  # each (B, H, S, K)
        kind = self.config.attention
        if kind == "exact":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif kind == "performer":
            wide = torch.promote_types(v.dtype, torch.float32)  # no fp16 exponentials
            projection = self.projection.to(wide)
            y = favor_causal(
                q.to(wide), k.to(wide), v.to(wide), projection, self.config.chunk
            ).to(v.dtype)
        else:
            y = hierarchical_causal(q, k, v, self.config.chunk)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, config: SeqConfig):
        super().__init__()
        d = config.width
        self.conv_norm = nn.LayerNorm(d)
        self.conv = nn.Conv1d(d, d, config.conv_kernel, groups=d)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(config)
        self.ff_norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(
            nn.Linear(d, config.ff_mult * d),
            nn.GELU(),
            nn.Linear(config.ff_mult * d, d),
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_norm(x).transpose(1, 2)  # (B, D, S)
        h = F.pad(h, (self.conv.kernel_size[0] - 1, 0))  # left pad: causal
        x = x + self.drop(self.conv(h).transpose(1, 2))
        x = x + self.drop(self.attn(self.attn_norm(x)))
        return x + self.drop(self.ff(self.ff_norm(x)))


class SeqLM(nn.Module):
    """Next-token model: tokens (B, S) + soft-mask flags (B, S) -> logits (B, S, V);
    logits at t predict token t + 1."""

    def __init__(self, config: SeqConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.width)
        self.soft_mask = nn.Embedding(2, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size)
        self.apply(init_weights)
        for block in self.blocks:  # residual branches start small
            for last in (block.attn.out, block.ff[-1]):
                nn.init.trunc_normal_(
                    last.weight, std=0.02 / math.sqrt(2 * len(self.blocks))
                )

    def hidden(self, tokens: Tensor, soft_mask: Tensor | None = None) -> Tensor:
        """Final hidden states (B, S, D) after the output norm."""
        x = self.tokens(tokens.long())
        if soft_mask is not None:
            x = x + self.soft_mask(soft_mask.long())
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, tokens: Tensor, soft_mask: Tensor | None = None) -> Tensor:
        return self.head(self.hidden(tokens, soft_mask))

    # -- reusable weights ----------------------------------------------------------
    def save_pretrained(self, directory, extra: dict | None = None) -> None:
        """Write ``model.safetensors`` and ``config.json`` (atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(self.state_dict(), directory / "model.safetensors")
        write_json(
            {
                "kind": "gperceiver-seq-lm",
                "format_version": SEQ_FORMAT_VERSION,
                "model": asdict(self.config),
                "vocab": list(VOCAB),
                **(extra or {}),
            },
            directory / "config.json",
        )

    @classmethod
    def from_pretrained(cls, directory, map_location: str = "cpu") -> SeqLM:
        """Rebuild a model written by :meth:`save_pretrained` (or ``seq pretrain``)."""
        directory = Path(directory)
        path = directory / "config.json"
        if not path.exists():
            raise InputError(
                directory, None, "no config.json", "pass a `seq pretrain` directory"
            )
        config = read_json(path)
        if config.get("kind") != "gperceiver-seq-lm":
            raise InputError(
                path, "kind", "not a sequence model", "pass a `seq pretrain` directory"
            )
        if config.get("format_version") != SEQ_FORMAT_VERSION:
            raise InputError(
                path,
                "format_version",
                f"sequence model format {config.get('format_version')} is not "
                f"supported (this gperceiver reads {SEQ_FORMAT_VERSION})",
                "retrain the model with this version",
            )
        if config.get("vocab") != list(VOCAB):
            raise InputError(
                path, "vocab", "other tokenizer vocabulary", "retrain the model"
            )
        model = cls(SeqConfig(**config["model"]))
        weights = load_tensors(directory / "model.safetensors")
        model.load_state_dict({k: v.to(map_location) for k, v in weights.items()})
        return model.to(map_location).eval()
