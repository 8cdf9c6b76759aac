"""Gated mixture of the memory's experts and a small neural context model.

Shape letters: B positions, E count experts, S copy slots, F gate features, L bases of
neural context.

    logits(b) = sum_e w_e log p_e(b) + sum_s v_s [pred_s = b] + a * neural(b)

with ``(w, v, a) = gate(z, h)`` per position: a geometric (logistic) mixture as in
PAQ/cmix, whose weights depend on how well each copy pointer did recently and how long
the memory match is, so the network learns how far to trust a match. ``neural`` reads
the last ``L`` bases (embedding + MLP; the part that models sequence never seen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .experts import N_EXPERTS, N_FEATURES, SLOTS


@dataclass
class MixerConfig:
    hidden: int = 64  # gate width: the gate sees ~40 features, 64 units are plenty
    neural_context: int = 16  # L bases read by the neural expert
    neural_hidden: int = 128  # neural expert width (an order-16 MLP model)
    embed: int = 8  # per-base embedding of the neural expert


class MemoryMixer(nn.Module):
    """(logp (B, E, 4), z (B, F), pred (B, S) int, recent (B, L) int)
    -> logits (B, 4)."""

    def __init__(self, config: MixerConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(5, c.embed)  # A C G T, break / before the start
        self.neural = nn.Sequential(
            nn.Linear(c.neural_context * c.embed, c.neural_hidden),
            nn.GELU(),
            nn.Linear(c.neural_hidden, c.neural_hidden),
            nn.GELU(),
        )
        self.neural_out = nn.Linear(c.neural_hidden, 4)
        self.gate = nn.Sequential(
            nn.Linear(N_FEATURES + c.neural_hidden, c.hidden),
            nn.GELU(),
            nn.Linear(c.hidden, c.hidden),
            nn.GELU(),
            nn.Linear(c.hidden, N_EXPERTS + SLOTS + 1),
        )
        last = self.gate[-1]
        nn.init.normal_(last.weight, std=0.01)
        nn.init.zeros_(last.bias)
        with torch.no_grad():  # start from the deepest interpolated count expert
            last.bias[N_EXPERTS - 1] = 1.0

    def forward(self, logp: Tensor, z: Tensor, pred: Tensor, recent: Tensor) -> Tensor:
        h = self.neural(self.embed(recent.long()).flatten(1))  # (B, H)
        weights = self.gate(torch.cat([z, h], -1))  # (B, E + S + 1)
        w, v = weights[:, :N_EXPERTS], weights[:, N_EXPERTS : N_EXPERTS + SLOTS]
        a = weights[:, -1:]
        votes = F.one_hot(pred.long().clamp_min(0), 4).float()
        votes = votes * (pred >= 0).unsqueeze(-1)  # (B, S, 4); idle slots vote nothing
        logits = (w.unsqueeze(-1) * logp).sum(1) + (v.unsqueeze(-1) * votes).sum(1)
        return logits + a * self.neural_out(h)
