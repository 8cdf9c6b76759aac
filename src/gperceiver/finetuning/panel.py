"""Finetuning with panel attention (``--params '{"panel": true}'``): the panel
is the training fold's individuals (their genotypes only); every individual,
training or validation, gets its genotypes copied from it (itself excluded) at
every marker, and these copies enter its marker tokens
(:meth:`~gperceiver.nn.heads.PhenotypeModel.tokens`).

Done once per run: the panel attention's few parameters are fitted by the masked
copy task (:func:`~gperceiver.tasks.panel.fit_panel`, as ``gperceiver impute``
fits them) on the training individuals alone, then the copies of every record's
individual are computed and cached (:class:`PanelCopies`); each ensemble member
keeps the same panel and attention (:class:`~gperceiver.nn.panel_reference.
PanelReference`), so ``predict`` copies new genotypes from the saved panel.

No leakage: validation individuals are queries, never panel members; no
phenotype enters the copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data import Genotypes
from ..nn.panel import PanelAttention, PanelConfig, PanelGenotypes
from ..nn.panel_reference import PanelReference
from ..tasks.panel import fit_panel_attention


@dataclass
class PanelCopies:
    """Cached copies: ``values`` (n, M, G) float32 of genotype rows ``rows`` (n,)
    (sorted, unique): n x M x G x 4 bytes (wheat: 9 MB)."""

    rows: np.ndarray
    values: Tensor

    def take(self, rows) -> Tensor:
        """The copies ``(B, M, G)`` of genotype ``rows``."""
        rows = np.asarray(rows)
        at = np.searchsorted(self.rows, rows)
        at = np.minimum(at, len(self.rows) - 1)
        if len(rows) and (self.rows[at] != rows).any():
            raise KeyError("no cached panel copy for some genotype rows")
        return self.values[torch.as_tensor(at, dtype=torch.long)]


@dataclass
class PanelInput:
    """What a finetuning run with the panel keeps: the panel (the training
    individuals), the fitted attention and the copies of every record's
    individual."""

    panel: PanelGenotypes
    attention: PanelAttention
    copies: PanelCopies
    fit_steps: int

    def attach(self, reference: PanelReference) -> None:
        """Store the panel and the attention in a model's reference."""
        reference.set(self.panel, self.attention)


def fit_panel_input(
    genotypes: Genotypes,
    panel_rows: np.ndarray,
    query_rows: np.ndarray,
    config: PanelConfig,
    steps: int,
    seed: int,
    chunk: int = 256,
) -> PanelInput:
    """Fit panel attention on the individuals ``panel_rows`` (masked copy task:
    each copies its hidden loci from the others) and copy every individual of
    ``query_rows`` (any rows; panel members exclude themselves) from them."""
    panel_rows = np.unique(panel_rows)
    panel, attention = fit_panel_attention(genotypes, panel_rows, config, steps, seed)
    reference = PanelReference(
        config, len(panel_rows), genotypes.markers.chrom, *_sizes(genotypes)
    )
    reference.set(panel, attention)
    rows = np.unique(query_rows)
    parts = [
        reference.copy_rows(genotypes, rows[start : start + chunk])
        for start in range(0, len(rows), chunk)
    ]
    return PanelInput(panel, attention, PanelCopies(rows, torch.cat(parts)), steps)


def _sizes(genotypes: Genotypes) -> tuple[int, int]:
    return genotypes.ploidy, genotypes.n_alleles
