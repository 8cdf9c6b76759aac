"""Masked-marker pretraining whose tokens read panel copies (``--params``
``{"panel": true}``, issue 16 item 1): the panel is the pretraining's training
individuals (never its held-out ones), each batch's individuals get their
genotypes copied from it at every marker, and the projection of these copies is
added to their marker tokens, which both the encoder's latents and the decoder's
window read (:meth:`~gperceiver.nn.perceiver.MaskedMarkerModel.add_panel`).

No leakage: a batch's copies are computed with its hidden target loci (and its
missing loci) treated as missing in the query, so a hidden locus is never read
from the query itself, and the query is never its own panel member (panel rows
with its name's identity are skipped). Panel members' genotypes are used whole:
they are other individuals. The panel attention is fitted once before training
by the masked copy task on the training individuals, then frozen.

Shape letters: B batch, M markers, M' markers fed to the encoder, T targets per
individual, G complete genotypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data import Genotypes
from ..device import model_device
from ..nn.panel import PanelConfig, PanelGenotypes
from ..nn.panel_reference import PanelReference
from .masked import MaskedMarkerTask, allele_count_loss
from .panel import fit_panel_attention


@dataclass
class PretrainPanel:
    # panel attention in masked pretraining: off by default (the keys share their
    # names with finetuning's, so one params file sets both stages alike)
    panel: bool = False
    panel_window: int = 32  # markers per window of the copy
    panel_layers: int = 2  # passes of the copy
    panel_fit_steps: int = 80  # masked copy task steps fitting its attention

    def __post_init__(self):
        if min(self.panel_window, self.panel_layers) < 1:
            raise ValueError("panel_window and panel_layers must be positive")
        if self.panel_fit_steps < 0:
            raise ValueError("panel_fit_steps must be >= 0")

    def attention_config(self) -> PanelConfig:
        return PanelConfig(block=self.panel_window, layers=self.panel_layers)


def add_training_panel(
    model, genotypes: Genotypes, train_rows: np.ndarray, cfg: PretrainPanel, seed: int
) -> None:
    """Give ``model`` (a :class:`~gperceiver.nn.perceiver.MaskedMarkerModel` on
    the CPU) the panel of the training individuals ``train_rows`` and its panel
    attention, fitted on them and frozen."""
    rows = np.unique(train_rows)
    config = cfg.attention_config()
    with torch.random.fork_rng():  # the model's own draws stay those of no panel
        panel, attention = fit_panel_attention(
            genotypes, rows, config, cfg.panel_fit_steps, seed
        )
    model.add_panel(config, len(rows))
    model.panel.set(panel, attention)


def batch_copies(
    reference: PanelReference,
    genotypes: Genotypes,
    rows: np.ndarray,
    inputs: Tensor,
    targets: Tensor,
    valid: Tensor,
) -> Tensor:
    """Copies ``(B, M', G)`` float32 (CPU) at the input loci ``inputs`` (M',) of
    genotype ``rows`` (B,) (in batch order), their target positions ``targets``
    (B, T) into ``inputs`` (where ``valid``) hidden from the query first: the
    copy of a row never reads its own values at its targets (nor at its missing
    loci, missing already), and never the row itself (identity)."""
    query = PanelGenotypes.from_genotypes(genotypes, rows)
    hidden = torch.zeros(query.genotype.shape, dtype=torch.bool)  # (B, M)
    loci = inputs[targets]  # (B, T) marker indices
    hidden.scatter_(1, loci, valid)
    hidden |= query.genotype < 0
    return reference.copy(query.hide(hidden))[:, inputs]


class PanelMaskedMarkerTask(MaskedMarkerTask):
    """:class:`MaskedMarkerTask` for a model with a panel: the same inputs and
    targets, the tokens enriched by the batch's copies (:func:`batch_copies`)."""

    def _forward(self, model, rows, generator, share: slice = slice(None)):
        masked, inputs, targets, valid, counts = self.batch(rows, generator)
        panel = getattr(model, "module", model).panel  # under DDP too
        copy = batch_copies(
            panel, self.genotypes, np.sort(rows)[share], inputs,
            targets[share], valid[share],
        )  # fmt: skip
        device = model_device(model)
        masked, targets, valid, counts = (
            t[share].to(device) for t in (masked, targets, valid, counts)
        )
        logits = model(masked, inputs.to(device), targets, copy=copy.to(device))
        complete = self.complete.to(device)
        loss, accuracy = allele_count_loss(logits, counts, valid, complete)
        return loss, {"accuracy": accuracy}
