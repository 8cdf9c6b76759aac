"""A phenotype model's panel: the training individuals' genotypes and a fitted
:class:`~gperceiver.nn.panel.PanelAttention`, kept with the model, from which any
individual's genotypes are copied to enrich its marker tokens.

Shape letters: Q query individuals, R panel individuals, M markers, G complete
genotypes (every multiset of P real alleles).

Leakage rules: the panel holds the genotypes of the training individuals only
(the caller decides who; finetuning passes its training fold), and a query is
never its own candidate: panel rows with the query's identity (a hash of its
name, :func:`~gperceiver.nn.panel.name_ids`) are skipped. Nothing here is
trained by the phenotype loss: the attention's few parameters are fitted
beforehand by the masked copy task (:mod:`gperceiver.tasks.panel`) and frozen.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from gperceiver.data import Genotypes
from gperceiver.nn.panel import (
    PanelAttention,
    PanelConfig,
    PanelGenotypes,
    complete_table,
)


def n_genotypes(ploidy: int, n_alleles: int) -> int:
    """G, the complete genotypes of ``ploidy`` copies of ``n_alleles`` alleles."""
    return len(complete_table(ploidy, n_alleles))


class PanelReference(nn.Module):
    """The panel ``genotype`` (R, M) int16 complete-genotype indices (-1 missing),
    its identities ``ids`` (R,) int64 and the marker map's chromosome per marker
    ``chrom`` (M,), all buffers (saved with the model), plus the frozen
    :class:`PanelAttention` ``attention``."""

    def __init__(
        self,
        config: PanelConfig,
        n_rows: int,
        marker_chrom,
        ploidy: int,
        n_alleles: int,
    ):
        super().__init__()
        chrom = torch.tensor(np.asarray(marker_chrom), dtype=torch.long)  # a copy
        self.ploidy, self.n_alleles = ploidy, n_alleles
        self.register_buffer(
            "genotype", torch.full((n_rows, len(chrom)), -1, dtype=torch.int16)
        )
        self.register_buffer("ids", torch.zeros(n_rows, dtype=torch.int64))
        self.register_buffer("chrom", chrom)
        self.attention = PanelAttention(config)
        self.attention.requires_grad_(False)

    @torch.no_grad()
    def set(self, panel: PanelGenotypes, attention: PanelAttention) -> None:
        """Store the panel's genotypes and the fitted ``attention``'s weights."""
        if tuple(panel.genotype.shape) != tuple(self.genotype.shape):
            raise ValueError(
                f"panel of shape {tuple(panel.genotype.shape)}, the model was "
                f"built for {tuple(self.genotype.shape)}"
            )
        self.genotype.copy_(panel.genotype)
        self.ids.copy_(panel.ids)
        self.attention.load_state_dict(attention.state_dict())

    def panel(self) -> PanelGenotypes:
        """The panel as :class:`PanelGenotypes` on the CPU."""
        return PanelGenotypes(
            self.genotype.cpu(), self.ids.cpu(), self.ploidy, self.n_alleles
        )

    @torch.no_grad()
    def copy(self, query: PanelGenotypes) -> Tensor:
        """Genotype probabilities ``(Q, M, G)`` float32 (CPU) of ``query`` copied
        from the panel, the query itself excluded. Every locus gets the copy, the
        called ones too: the tokens then carry what the query's closest panel
        relatives hold there, next to its own alleles."""
        attention = self.attention
        if next(attention.parameters()).device.type != "cpu":
            attention = copy.deepcopy(attention).cpu()  # panel attention: CPU code
        attention.eval()
        return attention(query, self.panel(), self.chrom.cpu().numpy())

    def copy_rows(self, genotypes: Genotypes, rows) -> Tensor:
        """:meth:`copy` of genotype ``rows`` (their names give their identities)."""
        return self.copy(PanelGenotypes.from_genotypes(genotypes, np.asarray(rows)))
