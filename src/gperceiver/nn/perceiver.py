"""The Perceiver's configuration and the masked-marker model built on its
encoder (:mod:`gperceiver.nn.encoder`).

Shape letters: B batch, M markers in a batch, P ploidy, A real alleles, L latents,
E extra latents (e.g. one per environment), T target loci, D width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gperceiver.nn.attention import (
    CrossBlock,
    init_weights,
    recompute,
)
from gperceiver.nn.config import PerceiverConfig
from gperceiver.nn.embeddings import MarkerEmbedding
from gperceiver.nn.encoder import PerceiverEncoder
from gperceiver.nn.panel import PanelConfig
from gperceiver.nn.panel_reference import PanelReference, n_genotypes
from gperceiver.nn.token_space import IN_PLACE_MIN_FLOATS, SharedTokens
from gperceiver.nn.window_attention import LOCAL_RECOMPUTE_MIN_FLOATS, LocalAttention


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
