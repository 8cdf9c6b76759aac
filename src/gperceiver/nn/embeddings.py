"""Marker tokens: the alleles at a locus plus where the locus sits.

Shape letters: B batch, M markers of the full map, M' markers in a batch, P ploidy,
A real alleles, D width, F Fourier frequencies.

Allele ids follow :mod:`gperceiver.data`: ``MISSING`` (0) is an uncalled copy,
``1..A`` are real alleles and ``A + 1`` is MASK, written into every copy of a
locus hidden from the model (an input the model must reconstruct, unlike a copy
nobody called).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from gperceiver.data import MISSING
from gperceiver.nn.attention import init_weights


def _id_counts(alleles: Tensor, n_ids: int, dtype: torch.dtype) -> Tensor:
    """Copies of each id ``0..n_ids-1``: (..., P) -> (..., n_ids)."""
    index = alleles.long()
    counts = torch.zeros(*index.shape[:-1], n_ids, dtype=dtype, device=index.device)
    return counts.scatter_add_(-1, index, torch.ones_like(index, dtype=dtype))


def count_targets(alleles: Tensor, n_alleles: int) -> Tensor:
    """Copies of each real allele: (..., P) ids -> (..., A) long.

    Missing and MASK copies count for nothing.

    >>> count_targets(torch.tensor([[0, 2], [1, 1]]), 2).tolist()
    [[0, 1], [2, 0]]
    """
    counts = _id_counts(alleles, n_alleles + 2, torch.long)  # ids 0..A+1
    return counts[..., MISSING + 1 : n_alleles + 1]


class MarkerEmbedding(nn.Module):
    """Allele ids (B, M', P) and marker indices into the map -> tokens (B, M', D).

    The allele part is the mean over copies of one table shared by all loci, so
    any ploidy and allele count fit and the scale does not grow with P. The
    position part (:meth:`position`) adds a chromosome embedding, a linear map of
    Fourier features of the position rescaled to [0, 1] within its chromosome
    (bp, cM and ordinal positions all work) and, optionally, a learned vector per
    marker.

    Parameters
    ----------
    n_alleles : real alleles A; the table holds ids ``0..A+1``.
    width : D.
    relative_pos : (M,) positions in [0, 1] within their chromosome.
    marker_chrom : (M,) chromosome index of each marker, ``< n_chroms``.
    n_chroms : chromosomes (an unplaced group counts as one).
    n_fourier : F frequencies, from 1 to (markers on the largest chromosome) / 2
        cycles per chromosome, geometrically spaced: the slowest tells the ends
        apart, the fastest neighbouring markers.
    learned_marker_embedding : add a learned (M, D) table.
    """

    def __init__(
        self,
        n_alleles: int,
        width: int,
        relative_pos,
        marker_chrom,
        *,
        n_chroms: int,
        n_fourier: int = 16,
        learned_marker_embedding: bool = True,
        marker_allele_embedding: bool = False,
    ):
        super().__init__()
        relative_pos = torch.as_tensor(np.asarray(relative_pos), dtype=torch.float32)
        marker_chrom = torch.as_tensor(np.asarray(marker_chrom), dtype=torch.long)
        if relative_pos.shape != marker_chrom.shape or relative_pos.dim() != 1:
            raise ValueError("relative_pos and marker_chrom must both have shape (M,)")
        if not len(marker_chrom):
            raise ValueError("the marker map is empty")
        if marker_chrom.min() < 0 or marker_chrom.max() >= n_chroms:
            raise ValueError(f"marker_chrom must lie in 0..{n_chroms - 1}")
        if n_fourier < 1:
            raise ValueError(f"n_fourier must be at least 1, got {n_fourier}")
        self.n_alleles = n_alleles
        self.register_buffer("relative_pos", relative_pos)  # (M,)
        self.register_buffer("marker_chrom", marker_chrom)  # (M,)
        largest = int(torch.bincount(marker_chrom).max())
        top = math.log(max(largest / 2, 1.0))
        self.register_buffer("freqs", torch.linspace(0.0, top, n_fourier).exp())  # (F,)
        self.allele_embed = nn.Embedding(n_alleles + 2, width)
        self.chrom_embed = nn.Embedding(n_chroms, width)
        self.fourier_proj = nn.Linear(2 * n_fourier, width)
        self.marker_embed = (
            nn.Embedding(len(marker_chrom), width) if learned_marker_embedding else None
        )
        # a vector per (marker, allele id): tokens can then carry marker-specific
        # allele effects, so even a uniform read of the markers is an additive model
        self.marker_allele_embed = (
            nn.Parameter(torch.zeros(len(marker_chrom), n_alleles + 2, width))
            if marker_allele_embedding
            else None
        )
        self.apply(init_weights)

    @property
    def mask_id(self) -> int:
        """The allele id of a masked copy, ``A + 1``."""
        return self.n_alleles + 1

    def position(self, marker_idx: Tensor) -> Tensor:
        """Position encoding: (M',) -> (M', D) or (B, M') -> (B, M', D)."""
        angle = 2 * math.pi * self.relative_pos[marker_idx, None] * self.freqs
        out = self.fourier_proj(torch.cat([angle.sin(), angle.cos()], dim=-1))
        out = out + self.chrom_embed(self.marker_chrom[marker_idx])
        if self.marker_embed is not None:
            out = out + self.marker_embed(marker_idx)
        return out

    def forward(self, alleles: Tensor, marker_idx: Tensor) -> Tensor:
        """Tokens (B, M', D) of allele ids (B, M', P) at marker_idx (M',) or (B, M')."""
        table = self.allele_embed.weight / alleles.shape[-1]  # mean over copies
        # counts @ table == sum of the copies' rows, without a (B, M', P, D) tensor
        counts = _id_counts(alleles, len(table), table.dtype)  # (B, M', A + 2)
        tokens = counts @ table + self.position(marker_idx)
        if self.marker_allele_embed is not None:
            per_marker = self.marker_allele_embed[
                marker_idx
            ]  # (M', A+2, D) or (B, ...)
            equation = "bmk,mkd->bmd" if marker_idx.dim() == 1 else "bmk,bmkd->bmd"
            tokens = (
                tokens + torch.einsum(equation, counts, per_marker) / alleles.shape[-1]
            )
        return tokens
