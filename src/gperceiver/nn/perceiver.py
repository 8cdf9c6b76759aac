"""Perceiver IO encoder and the masked-marker model built on it.

Shape letters: B batch, M markers in a batch, P ploidy, A real alleles, L latents,
E extra latents (e.g. one per environment), T target loci, D width.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gperceiver.nn.attention import (
    CrossBlock,
    KeyValues,
    SelfBlock,
    init_weights,
    recompute,
)
from gperceiver.nn.embeddings import MarkerEmbedding
from gperceiver.nn.panel import PanelConfig
from gperceiver.nn.panel_reference import PanelReference, n_genotypes
from gperceiver.nn.token_space import IN_PLACE_MIN_FLOATS, SharedTokens, standardize
from gperceiver.nn.window_attention import LOCAL_RECOMPUTE_MIN_FLOATS, LocalAttention

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


def marker_embedding(
    config: PerceiverConfig, relative_pos, marker_chrom
) -> MarkerEmbedding:
    """The :class:`MarkerEmbedding` a config describes, for marker map (M,) arrays."""
    return MarkerEmbedding(
        config.n_alleles,
        config.width,
        relative_pos,
        marker_chrom,
        n_chroms=config.n_chroms,
        n_fourier=config.n_fourier,
        learned_marker_embedding=config.learned_marker_embedding,
        marker_allele_embedding=config.marker_allele_embedding,
        fourier_position=config.fourier_position,
        n_graph_edges=config.n_graph_edges,
        graph_layers=config.graph_layers,
        graph_heads=config.graph_heads,
        ff_mult=config.ff_mult,
        dropout=config.dropout,
        checkpoint=config.checkpoint_attention,
        n_annotations=config.n_annotations,
        annotation_levels=config.annotation_levels,
    )


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


def target_decoder_layers(
    config: PerceiverConfig, dropout: float | None = None
) -> tuple[nn.ModuleList, ...]:
    """Decoder layers reading target loci: local attention layers (none when
    ``decoder_window`` is 0) and cross-attention blocks over the latents.
    ``dropout`` overrides ``config.dropout``."""
    c = config
    dropout = c.dropout if dropout is None else dropout
    # each decoder layer reads the target's neighbouring tokens, then the L
    # latents (no chunking needed: L is small; latent-side heads)
    local = nn.ModuleList(
        LocalAttention(
            c.width,
            c.self_heads,
            c.decoder_window,
            dropout,
            checkpoint=c.checkpoint_attention,
        )
        for _ in range(c.decoder_layers if c.decoder_window else 0)
    )
    blocks = nn.ModuleList(
        CrossBlock(c.width, c.self_heads, c.ff_mult, dropout)
        for _ in range(c.decoder_layers)
    )
    return local, blocks


class MaskedMarkerModel(nn.Module):
    """Marker embedding, Perceiver encoder and a decoder predicting allele counts.

    The decoder's queries are the position encodings of the target loci; each
    reads the latents through ``decoder_layers`` cross-attention blocks. For every
    real allele the head gives a categorical over its copy count ``0..P``:
    logits (B, T, A, P + 1).

    ``relative_pos`` and ``marker_chrom`` (M,) describe the marker map, see
    :class:`MarkerEmbedding`.
    """

    def __init__(self, config: PerceiverConfig, relative_pos, marker_chrom):
        super().__init__()
        c = config
        self.config = config
        self.embed = marker_embedding(config, relative_pos, marker_chrom)
        if len(self.embed.relative_pos) != c.n_markers:
            raise ValueError(
                f"marker map has {len(self.embed.relative_pos)} markers, "
                f"config says {c.n_markers}"
            )
        self.encoder = PerceiverEncoder(config)
        self.local, self.decoder = target_decoder_layers(config)
        self.decoder_norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.n_alleles * (c.ploidy + 1))
        for module in (self.local, self.decoder, self.head):
            module.apply(init_weights)
        self.panel = self.panel_embed = None  # see add_panel

    def add_panel(self, panel: PanelConfig, n_rows: int) -> None:
        """Give the model a panel of ``n_rows`` individuals
        (:class:`~gperceiver.nn.panel_reference.PanelReference`, filled by the
        caller) and the projection ``panel_embed`` of their copies (G -> D, zero
        at first) added to its marker tokens: both the latents and the decoder's
        window then read the enriched tokens (pretraining option ``panel``)."""
        c = self.config
        self.panel = PanelReference(
            panel, n_rows, self.embed.marker_chrom.cpu(), c.ploidy, c.n_alleles
        )
        self.panel_embed = nn.Linear(n_genotypes(c.ploidy, c.n_alleles), c.width, False)
        nn.init.zeros_(self.panel_embed.weight)

    def panel_copy(self, genotypes, rows) -> Tensor | None:
        """The copies ``(B, M, G)`` of genotype ``rows`` from the model's panel
        (their missing loci missing in the query, the query itself excluded), on
        the model's device; None without a panel."""
        if self.panel is None:
            return None
        return self.panel.copy_rows(genotypes, rows).to(self.head.weight.device)

    def encode(
        self,
        alleles: Tensor,
        marker_idx: Tensor,
        mask: Tensor | None = None,
        extra_latents: Tensor | None = None,
        return_tokens: bool = False,
        table: Tensor | None = None,
        copy: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Latents (B, L + E, D) of allele ids (B, M, P) at ``marker_idx``.

        ``marker_idx`` (M,) or (B, M) indexes the marker map; ``mask`` and
        ``extra_latents`` as in :meth:`PerceiverEncoder.forward`. With
        ``return_tokens`` also what the decoder reads of the marker tokens:
        their :func:`~gperceiver.nn.token_space.standardize` (B, M, D), shared
        with the encoder.
        ``table``: ``self.embed.position_table()`` when the caller also decodes
        (computed once, used by both). ``copy`` (B, M, G): the panel copies of
        the same markers, required by a model with a panel (:meth:`add_panel`).
        ``positions``: ``self.embed.position(marker_idx, table)`` when the
        caller has it (the decoder then reads its targets' rows).
        """
        if alleles.shape[-1] != self.config.ploidy:
            raise ValueError(
                f"alleles have ploidy {alleles.shape[-1]}, "
                f"the model was built for {self.config.ploidy}"
            )
        token_space = all(it.cross.attn.token_space for it in self.encoder.iterations)
        if (
            self.panel_embed is None
            and token_space
            and self.embed.fuses(alleles, marker_idx)
        ):
            # nothing reads the raw tokens: the embedding's kernels standardize
            # them in the same pass (they never reach memory)
            tokens = self.embed(
                alleles, marker_idx, table, standardized=True, position=positions
            )
            shared = SharedTokens(tokens)
        else:
            tokens = self.embed(alleles, marker_idx, table, position=positions)
            if self.panel_embed is not None:
                if copy is None:
                    raise ValueError("this model reads panel copies: pass copy=...")
                tokens = tokens + self.panel_embed(copy.to(tokens.dtype))
            # every read of the tokens in token space: standardized in place
            # when large (nothing else reads the raw tokens then)
            in_place = (
                torch.is_grad_enabled()
                and tokens.numel() >= IN_PLACE_MIN_FLOATS
                and token_space
            )
            shared = SharedTokens.of(tokens, in_place)
        latents = self.encoder(tokens, mask, extra_latents, shared)
        return (latents, shared.standardized) if return_tokens else latents

    def decode(
        self,
        latents: Tensor,
        tokens: Tensor,
        marker_idx: Tensor,
        target_pos: Tensor,
        table: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Copy-count logits (B, T, A, P + 1) at input positions ``target_pos``.

        ``target_pos`` (B, T) or (T,) indexes the input sequence of ``tokens``
        (B, M, D), the standardized tokens from :meth:`encode`, whose marker
        indices are ``marker_idx`` (M,) or (B, M); ``table`` and ``positions``
        as in :meth:`encode`.
        """
        queries = self.target_queries(
            latents,
            tokens,
            marker_idx,
            target_pos,
            self.local,
            self.decoder,
            table,
            positions,
        )
        logits = self.head(self.decoder_norm(queries))  # (B, T, A * (P + 1))
        return logits.unflatten(-1, (self.config.n_alleles, self.config.ploidy + 1))

    def target_queries(
        self,
        latents: Tensor,
        tokens: Tensor,
        marker_idx: Tensor,
        target_pos: Tensor,
        local: nn.ModuleList,
        blocks: nn.ModuleList,
        table: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Target queries (B, T, D) after the decoder layers ``local`` and ``blocks``
        (from :func:`target_decoder_layers`); arguments as in :meth:`decode`."""
        b, m = tokens.shape[:2]
        target_pos = target_pos.expand(b, -1)  # (B, T)
        if positions is None:
            target_idx = marker_idx.expand(b, m).gather(1, target_pos)  # (B, T)
            queries = self.embed.position(target_idx, table)  # (B, T, D)
        elif positions.dim() == 2:  # (M, D): one row gather, one index_add back
            queries = positions.index_select(0, target_pos.flatten())
            queries = queries.view(*target_pos.shape, -1)
        else:
            index = target_pos[..., None].expand(-1, -1, positions.shape[-1])
            queries = positions.gather(1, index)
        for i, block in enumerate(blocks):
            if local:
                queries = self._run(local[i], queries, tokens, target_pos, True)
            queries = block(queries, latents)
        return queries

    def _run(self, layer, *args):
        """Run the window ``layer``, recomputing it in backward when checkpointing
        (auto: from ``LOCAL_RECOMPUTE_MIN_FLOATS`` token floats): its weights
        and per-target tensors then exist only while it runs."""
        setting = self.config.checkpoint_attention
        if recompute(setting, args[1], LOCAL_RECOMPUTE_MIN_FLOATS):
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(
        self,
        alleles: Tensor,
        marker_idx: Tensor,
        target_pos: Tensor,
        mask: Tensor | None = None,
        copy: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, T, A, P + 1) at input positions ``target_pos`` (B, T) or (T,);
        ``copy`` as in :meth:`encode`."""
        table = self.embed.position_table()
        # the inputs' position vectors, once: the targets' are rows of them
        positions = self.embed.position(marker_idx, table)  # (M, D) or (B, M, D)
        latents, tokens = self.encode(
            alleles,
            marker_idx,
            mask,
            return_tokens=True,
            table=table,
            copy=copy,
            positions=positions,
        )
        return self.decode(latents, tokens, marker_idx, target_pos, table, positions)
