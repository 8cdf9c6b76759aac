"""The Perceiver encoder: learned latents read the marker tokens, then attend
among themselves, ``encode_iters`` times.

Shape letters: B batch, M markers in a batch, L latents, E extra latents (e.g.
one per environment), D width.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor, nn

from gperceiver.nn.attention import CrossBlock, KeyValues, SelfBlock, init_weights
from gperceiver.nn.config import PerceiverConfig
from gperceiver.nn.token_space import SharedTokens, standardize


class EncoderIteration(nn.Module):
    """One read of the tokens: cross-attention block, then self-attention blocks."""

    def __init__(self, config: PerceiverConfig):
        super().__init__()
        c = config
        self.cross = CrossBlock(
            c.width,
            c.cross_heads,
            c.ff_mult,
            c.dropout,
            c.chunk_size,
            c.checkpoint_attention,
        )
        self.selfs = nn.ModuleList(
            SelfBlock(c.width, c.self_heads, c.ff_mult, c.dropout)
            for _ in range(c.self_layers)
        )

    def forward(
        self,
        latents: Tensor,
        tokens: Tensor,
        mask: Tensor | None = None,
        kv: KeyValues | None = None,
    ) -> Tensor:
        """Latents (B, L, D) after reading ``tokens`` (through their cached ``kv``)."""
        latents = self.cross(latents, tokens, mask, kv)
        for block in self.selfs:
            latents = block(latents)
        return latents


class PerceiverEncoder(nn.Module):
    """Learned latents (L, D) read tokens (B, M, D) ``encode_iters`` times."""

    def __init__(self, config: PerceiverConfig):
        super().__init__()
        n_unique = {
            "all": 1,
            "after_first": min(2, config.encode_iters),
            "none": config.encode_iters,
        }[config.share_weights]
        self.iterations = nn.ModuleList(
            EncoderIteration(config) for _ in range(n_unique)
        )
        # iteration i runs self.iterations[schedule[i]]
        self.schedule = [min(i, n_unique - 1) for i in range(config.encode_iters)]
        self.norm = nn.LayerNorm(config.width)
        self.apply(init_weights)
        self.latents = nn.Parameter(
            nn.init.trunc_normal_(
                torch.empty(config.n_latents, config.width), std=0.02, a=-0.04, b=0.04
            )
        )

    def forward(
        self,
        tokens: Tensor,
        mask: Tensor | None = None,
        extra_latents: Tensor | None = None,
        standardized: Tensor | SharedTokens | None = None,
    ) -> Tensor:
        """Latents (B, L + E, D) of tokens (B, M, D).

        ``mask`` (B, M) bool is True for tokens to read; ``extra_latents``
        (B or 1, E, D) are appended to the learned latents; ``standardized``:
        :func:`~gperceiver.nn.token_space.standardize` of the tokens (or their
        :class:`~gperceiver.nn.token_space.SharedTokens`), when the caller has
        it (token-space reads all share it).
        """
        b = tokens.shape[0]
        x = self.latents.expand(b, -1, -1)  # (B, L, D)
        if extra_latents is not None:
            x = torch.cat([x, extra_latents.expand(b, -1, -1)], dim=1)  # (B, L+E, D)
        # shared cross-attention: project the tokens to K/V once, reuse every
        # time; every token-space layer reads one cache of the standardized
        # tokens, into whose buffer all their gradients add (SharedTokens)
        token_space = [it.cross.attn.token_space for it in self.iterations]
        shared = standardized if isinstance(standardized, SharedTokens) else None
        if any(token_space) and shared is None:
            if standardized is None:
                standardized = standardize(tokens)
            shared = SharedTokens(standardized)
        kv = {
            i: shared
            if token_space[i]
            else self.iterations[i].cross.attn.project_kv(tokens)
            for i, uses in Counter(self.schedule).items()
            if uses > 1 or token_space[i]
        }
        for i in self.schedule:
            x = self.iterations[i](x, tokens, mask, kv.get(i))
        return self.norm(x)
