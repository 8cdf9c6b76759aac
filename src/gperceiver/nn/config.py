"""The Perceiver's sizes and switches (:class:`PerceiverConfig`), read by the
encoder (:mod:`gperceiver.nn.encoder`) and the models built on it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SHARE_WEIGHTS = ("all", "after_first", "none")
_POSITIVE = (
    "n_alleles",
    "ploidy",
    "n_markers",
    "n_chroms",
    "width",
    "n_latents",
    "encode_iters",
    "n_fourier",
    "ff_mult",
    "decoder_layers",
)


@dataclass
class PerceiverConfig:
    """Sizes and switches of :class:`PerceiverEncoder` and :class:`MaskedMarkerModel`.

    The first four fields come from the data. Defaults are small enough to train
    in minutes on two CPU cores.
    """

    n_alleles: int  # A, real alleles per locus
    ploidy: int  # P, copies per locus; the decoder predicts counts 0..P
    n_markers: int  # M of the marker map
    n_chroms: int  # chromosomes of the marker map (an unplaced group counts as one)
    # D: a batch of 8 x 10k markers trains in a fraction of a second on 2 CPU
    # cores; with one cross head the cost per marker grows with L * D (attention
    # runs in token space, see CrossAttention), with more heads with D^2 too.
    width: int = 64
    # L: the bottleneck every marker is summarised into; cost is linear in L * M,
    # and 32 x 64 numbers already exceed what a few hundred phenotyped lines fit.
    n_latents: int = 32
    # one cross head reads each marker with all D channels, as in Perceiver; with
    # one head the markers are never projected to keys and values (token space).
    cross_heads: int = 1
    # heads of 16 channels in the latent self-attention, where L^2 is cheap.
    self_heads: int = 4
    # self-attention blocks per iteration; they cost L^2, not M.
    self_layers: int = 2
    # reads of the markers: the second is guided by what the first found, and
    # with shared weights it reuses the K/V, costing only L * M.
    encode_iters: int = 2
    # "all": one set of weights for every iteration (fewest parameters; K/V over
    # the markers computed once per forward); "after_first": the first iteration
    # has its own; "none": every iteration has its own.
    share_weights: str = "all"
    # F: frequencies from 1 to (markers per chromosome) / 2 cycles per chromosome.
    n_fourier: int = 16
    # a learned vector per marker lets each locus carry its own allele meaning
    # (which id is common, how it links); costs M * D parameters.
    learned_marker_embedding: bool = True
    # a vector per (marker, allele): lets tokens carry marker-specific allele
    # effects, so an additive model is one uniform read away (on wheat it is what
    # lets finetuning learn at all); M * (A + 2) * D parameters, so None (auto)
    # turns it on up to 50k markers only.
    marker_allele_embedding: bool | None = None
    # feed-forward hidden width as a multiple of D; 2 keeps CPU cost down.
    ff_mult: int = 2
    # decoder cross-attention blocks; one non-linear block reads the latents,
    # its cost is T * L, tiny next to the encoder.
    decoder_layers: int = 1
    # neighbouring input tokens (each side) a decoder query reads besides the
    # latents: linkage is local, and a bottleneck of L latents cannot carry every
    # haplotype, so imputation needs this short-range path; 0 switches it off.
    # None (auto): 16 up to 100k markers, off above, where its per-layer copy of
    # the tokens (B, M, D) strains the 8 GB budget at 500k markers (BENCHMARKS.md).
    decoder_window: int | None = None
    # residual dropout; phenotyped sets are small, so a little regularisation.
    dropout: float = 0.1
    # markers per cross-attention chunk; scores then take O(L * chunk) memory.
    # 16384 leaves typical panels (<= 16k markers) in one fused SDPA call.
    chunk_size: int | None = 16384
    # recompute each chunk's LN, K/V projection and scores in backward instead of
    # storing them: activations shrink to ~3 (B, M, D) tensors (tokens + shared
    # K/V); 500k markers x batch 8 fit in ~7 GB. (With one cross head the encoder
    # recomputes its scores in backward anyway and keeps only the normed tokens;
    # the setting then applies to the decoder's window and the graph layers.)
    # None (auto): only for batches whose tokens hold >= 16M floats (64 MiB),
    # since at wheat's size (32 x 1279 x 64) recomputing costs time and saves
    # little; the decoder's window only from 128M floats (nn.window_attention
    # LOCAL_RECOMPUTE_MIN_FLOATS; BENCHMARKS.md, Scale).
    checkpoint_attention: bool | None = None
    # Fourier features of the position; off leaves chromosome + learned vectors
    # (with learned_marker_embedding) for the position-encoding ablation.
    fourier_position: bool = True
    # edges of the marker graph (from the data; 0: no graph; see marker_graph.py)
    n_graph_edges: int = 0
    # graph-attention layers refining the (M, D) position table once per forward
    # when there is a graph: two reach neighbours of neighbours; each costs
    # O(edges * D), not per individual.
    graph_layers: int = 2
    # heads of the graph attention (16 channels each at the default width)
    graph_heads: int = 4
    # numeric annotation columns and levels of each categorical one (from the data)
    n_annotations: int = 0
    annotation_levels: tuple[int, ...] = ()

    def __post_init__(self):
        if self.marker_allele_embedding is None:
            self.marker_allele_embedding = self.n_markers <= 50_000
        if self.decoder_window is None:
            self.decoder_window = 16 if self.n_markers <= 100_000 else 0
        for name in _POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        self.annotation_levels = tuple(int(n) for n in self.annotation_levels)
        for name in ("n_graph_edges", "graph_layers", "n_annotations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if any(n < 1 for n in self.annotation_levels):
            raise ValueError("every categorical annotation needs a level")
        if self.graph_heads < 1 or self.width % self.graph_heads:
            raise ValueError(
                f"width {self.width} does not split into {self.graph_heads} heads"
            )
        if self.self_layers < 0:
            raise ValueError(f"self_layers must be >= 0, got {self.self_layers}")
        for heads in (self.cross_heads, self.self_heads):
            if heads < 1 or self.width % heads:
                raise ValueError(
                    f"width {self.width} does not split into {heads} heads"
                )
        if self.share_weights not in SHARE_WEIGHTS:
            raise ValueError(
                f"share_weights must be one of {SHARE_WEIGHTS}, "
                f"got {self.share_weights!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive or None: {self.chunk_size}")

    @property
    def mask_id(self) -> int:
        """The allele id of a masked copy, ``A + 1``."""
        return self.n_alleles + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PerceiverConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown PerceiverConfig fields: {sorted(unknown)}")
        return cls(**values)
