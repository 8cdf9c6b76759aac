"""Mixing along markers: each window's score plus its neighbours', weighted by
taps (a head of panel attention counts a longer shared stretch)."""

from __future__ import annotations

import torch
from torch import Tensor


def mix_along_windows(distance: Tensor, taps: Tensor) -> Tensor:
    """``out[w] = sum_d taps[d + r] * distance[w + d]`` over ``|d| <= r``, windows
    past the chromosome's ends counting 0: (W, ...) -> (W, ...)."""
    n_w, r = distance.shape[0], (len(taps) - 1) // 2
    if not (torch.is_grad_enabled() and taps.requires_grad):
        out = torch.zeros_like(distance)  # in place: no graph to keep
        for d, tap in zip(range(-r, r + 1), taps.tolist(), strict=True):
            lo, hi = max(0, -d), n_w - max(0, d)
            if lo < hi:
                out[lo:hi].add_(distance[lo + d : hi + d], alpha=tap)
        return out
    pad = torch.zeros((r, *distance.shape[1:]), dtype=distance.dtype)
    padded = torch.cat([pad, distance, pad])
    return sum(taps[d + r] * padded[r + d : r + d + n_w] for d in range(-r, r + 1))
