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
from gperceiver.nn import embedding_kernels
from gperceiver.nn.attention import init_weights
from gperceiver.nn.embedding_kernels import AlleleTokens
from gperceiver.nn.graph_attention import GraphAttention
from gperceiver.nn.token_space import standardize


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


class AnnotationEmbedding(nn.Module):
    """Marker annotations -> a vector per marker: (M',) indices -> (M', D).

    Numeric columns (standardised, missing = 0) enter a linear map together with
    their missing flags; each categorical column has its own table (row 0 =
    missing). The annotations are buffers filled by :meth:`set`, so a saved model
    carries them.
    """

    def __init__(self, n_markers: int, width: int, n_numeric: int, levels=()):
        super().__init__()
        self.register_buffer("values", torch.zeros(n_markers, n_numeric))  # (M, C)
        self.register_buffer("missing", torch.zeros(n_markers, n_numeric))  # (M, C)
        self.register_buffer(
            "codes", torch.zeros(n_markers, len(levels), dtype=torch.long)
        )  # (M, K)
        self.numeric = nn.Linear(2 * n_numeric, width) if n_numeric else None
        self.tables = nn.ModuleList(nn.Embedding(n + 1, width) for n in levels)
        self.apply(init_weights)

    @torch.no_grad()
    def set(self, values, missing, codes) -> None:
        """Store (M, C) standardised values and missing flags and (M, K) codes."""
        for name, array in (("values", values), ("missing", missing), ("codes", codes)):
            buffer = getattr(self, name)
            new = torch.as_tensor(np.asarray(array), dtype=buffer.dtype)
            if new.shape != buffer.shape:
                raise ValueError(
                    f"annotation {name} {tuple(new.shape)}, "
                    f"the model was built for {tuple(buffer.shape)}"
                )
            buffer.copy_(new)
        for k, table in enumerate(self.tables):
            if self.codes[:, k].max() >= table.num_embeddings:
                raise ValueError(f"annotation column {k} has a code above its levels")

    def forward(self, marker_idx: Tensor) -> Tensor:
        out = 0.0
        if self.numeric is not None:
            out = self.numeric(
                torch.cat([self.values[marker_idx], self.missing[marker_idx]], -1)
            )
        for k, table in enumerate(self.tables):
            out = out + table(self.codes[marker_idx, k])
        return out


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
    fourier_position : add the Fourier features of the position.
    marker_allele_embedding : add a learned vector per (marker, allele id).
    n_graph_edges : edges of a marker graph (0: none); with ``graph_layers`` > 0
        the position table (M, D) is refined by that many :class:`GraphAttention`
        layers once per forward, then indexed. The edges are buffers set by
        :meth:`set_graph`.
    n_annotations, annotation_levels : numeric annotation columns and the levels
        of each categorical one, see :class:`AnnotationEmbedding` (added to the
        position vector before the graph layers).
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
        fourier_position: bool = True,
        n_graph_edges: int = 0,
        graph_layers: int = 0,
        graph_heads: int = 4,
        ff_mult: int = 2,
        dropout: float = 0.0,
        checkpoint: bool | None = None,
        n_annotations: int = 0,
        annotation_levels=(),
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
        self.fourier_proj = (
            nn.Linear(2 * n_fourier, width) if fourier_position else None
        )
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
        self.graph = None
        self._frozen_table: tuple[tuple, Tensor] | None = None  # see position_table
        if n_graph_edges:
            for name, dtype in (("src", torch.long), ("dst", torch.long)):
                self.register_buffer(
                    f"graph_{name}", torch.zeros(n_graph_edges, dtype=dtype)
                )
            self.register_buffer("graph_weight", torch.ones(n_graph_edges))  # (E,)
            self.graph = nn.ModuleList(
                GraphAttention(
                    width, graph_heads, ff_mult, dropout, checkpoint=checkpoint
                )
                for _ in range(graph_layers)
            )
        self.annotations = None
        if n_annotations or annotation_levels:
            self.annotations = AnnotationEmbedding(
                len(marker_chrom), width, n_annotations, annotation_levels
            )
        self.apply(init_weights)

    @property
    def mask_id(self) -> int:
        """The allele id of a masked copy, ``A + 1``."""
        return self.n_alleles + 1

    @torch.no_grad()
    def set_graph(self, src, dst, weight) -> None:
        """Store the marker graph: edges ``src -> dst`` (E,) sorted by ``dst``,
        weights (E,) > 0."""
        if self.graph is None:
            raise ValueError("the model was built without a marker graph")
        for name, array in (("src", src), ("dst", dst), ("weight", weight)):
            buffer = getattr(self, f"graph_{name}")
            new = torch.as_tensor(np.asarray(array), dtype=buffer.dtype)
            if new.shape != buffer.shape:
                raise ValueError(
                    f"graph has {len(new)} edges, the model was built for {len(buffer)}"
                )
            buffer.copy_(new)
        if (self.graph_dst.diff() < 0).any() or (self.graph_weight <= 0).any():
            raise ValueError("graph edges must be sorted by dst with weights > 0")

    @torch.no_grad()
    def set_annotations(self, values, missing, codes) -> None:
        """Store annotations, see :meth:`AnnotationEmbedding.set`."""
        if self.annotations is None:
            raise ValueError("the model was built without annotations")
        self.annotations.set(values, missing, codes)

    def _base_position(self, marker_idx: Tensor) -> Tensor:
        """Position vector before the graph layers: (..., ) -> (..., D)."""
        out = self.chrom_embed(self.marker_chrom[marker_idx])
        if self.fourier_proj is not None:
            angle = 2 * math.pi * self.relative_pos[marker_idx, None] * self.freqs
            out = self.fourier_proj(torch.cat([angle.sin(), angle.cos()], -1)) + out
        if self.marker_embed is not None:
            out = out + self.marker_embed(marker_idx)
        if self.annotations is not None:
            out = out + self.annotations(marker_idx)
        return out

    def position_table(self) -> Tensor | None:
        """The graph-refined position table (M, D), or None without graph layers
        (positions are then computed per index, for the markers of a batch only).

        Compute it once per forward and pass it to :meth:`position` /
        :meth:`forward` of that forward. In eval mode without gradients the table
        is kept until a parameter or buffer changes (in place or replaced), so
        inference batches share one.
        """
        if not self.graph:
            return None
        frozen = not self.training and not torch.is_grad_enabled()
        if frozen:
            key = tuple((t.data_ptr(), t._version) for t in self._state_tensors())
            if self._frozen_table is not None and self._frozen_table[0] == key:
                return self._frozen_table[1]
        every = torch.arange(len(self.marker_chrom), device=self.marker_chrom.device)
        table = self._base_position(every)
        for layer in self.graph:
            table = layer(table, self.graph_src, self.graph_dst, self.graph_weight)
        self._frozen_table = (key, table) if frozen else None
        return table

    def _state_tensors(self) -> list[Tensor]:
        return [*self.parameters(), *self.buffers()]

    def position(self, marker_idx: Tensor, table: Tensor | None = None) -> Tensor:
        """Position encoding: (M',) -> (M', D) or (B, M') -> (B, M', D).

        ``table``: the :meth:`position_table` of this forward (computed here when
        the model has graph layers and none is given).
        """
        if table is None:
            table = self.position_table()
        if table is None:
            return self._base_position(marker_idx)
        return table[marker_idx]

    def fuses(self, alleles: Tensor, marker_idx: Tensor) -> bool:
        """Whether :meth:`forward` runs the fused CPU kernels on these inputs
        (and so can standardize the tokens in the same pass)."""
        floats = [self.allele_embed.weight]
        if self.marker_allele_embed is not None:
            floats.append(self.marker_allele_embed)
        return embedding_kernels.available(alleles, marker_idx, *floats)

    def forward(
        self,
        alleles: Tensor,
        marker_idx: Tensor,
        table: Tensor | None = None,
        standardized: bool = False,
        position: Tensor | None = None,
    ) -> Tensor:
        """Tokens (B, M', D) of allele ids (B, M', P) at marker_idx (M',) or (B, M');
        ``table`` as in :meth:`position`. ``standardized``: the tokens'
        :func:`~gperceiver.nn.token_space.standardize` instead, in the same pass
        where :meth:`fuses`. ``position``: ``self.position(marker_idx, table)``
        when the caller has it."""
        weights = self.allele_embed.weight
        per_marker = self.marker_allele_embed
        if position is None:
            position = self.position(marker_idx, table)  # (M', D) or (B, M', D)
        if self.fuses(alleles, marker_idx):
            # CPU: one fused pass each way (nn.embedding_kernels)
            return AlleleTokens.apply(
                alleles.long(),
                weights,
                per_marker,
                marker_idx.long(),
                position,
                standardized,
            )
        if standardized:
            return standardize(self(alleles, marker_idx, table, position=position))
        # counts @ weights == sum of the copies' rows, without a (B, M', P, D)
        # tensor; dividing the counts (A + 2 wide), not the tokens (D wide), by P
        # gives the mean over copies
        counts = _id_counts(alleles, len(weights), weights.dtype)  # (B, M', A + 2)
        counts = counts / alleles.shape[-1]
        # in place: one fresh (B, M', D) tensor instead of two (at 500k markers x
        # batch 8 each is 1 GB the kernel must back with pages again every step)
        tokens = (counts @ weights).add_(position)
        if self.marker_allele_embed is not None:
            per_marker = self.marker_allele_embed[
                marker_idx
            ]  # (M', A+2, D) or (B, ...)
            equation = "bmk,mkd->bmd" if marker_idx.dim() == 1 else "bmk,bmkd->bmd"
            tokens = tokens + torch.einsum(equation, counts, per_marker)
        return tokens
