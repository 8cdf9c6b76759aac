"""Masked-marker objective: hide loci, predict each allele's copy count there.

Shape letters: B batch, M markers, M' markers fed to the encoder, P ploidy,
A real alleles, T targets per individual, G complete genotypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import MISSING, Genotypes, allele_decoder
from ..device import model_device
from ..nn.embeddings import count_targets


@dataclass
class MaskedConfig:
    target_fraction: float = (
        0.1  # share of input loci hidden and predicted per genotype (prop_y)
    )
    input_fraction: float = 1.0  # share of loci fed to the encoder per batch (prop_x)
    # targets are drawn with probability ∝ Π_copies (1 - p(allele))^s: rare alleles
    # are drawn more often, so the model cannot win by predicting the common allele
    frequency_scaler: float = 0.5

    def __post_init__(self):
        if not 0 < self.target_fraction < 1:
            raise ValueError(
                f"target_fraction must be in (0, 1), got {self.target_fraction}"
            )
        if not 0 < self.input_fraction <= 1:
            raise ValueError(
                f"input_fraction must be in (0, 1], got {self.input_fraction}"
            )
        if self.frequency_scaler < 0:
            raise ValueError(
                f"frequency_scaler must be >= 0, got {self.frequency_scaler}"
            )


def target_log_weights(frequencies: np.ndarray, scaler: float) -> Tensor:
    """Per-copy log sampling weight ``s * log(1 - p)``, (M, A + 2) float32.

    Column = allele id; the missing id gets ``-inf`` so loci with a missing copy are
    never targets. (The last column, the mask id, never occurs in real data.)
    """
    m, a = frequencies.shape
    table = np.full((m, a + 2), -np.inf, dtype=np.float64)
    table[:, 1 : a + 1] = scaler * np.log(np.clip(1.0 - frequencies, 1e-6, None))
    return torch.from_numpy(table.astype(np.float32))


def sample_targets(
    alleles: Tensor, log_weights: Tensor, n_targets: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Draw ``n_targets`` loci per row without replacement (Gumbel top-k).

    ``alleles`` (B, M', P) long and ``log_weights`` (M', A + 2) for the same loci.
    Returns positions (B, T) into M' and a validity mask (B, T): a row with fewer
    eligible loci than T gets invalid entries instead of missing loci.
    """
    b, m, ploidy = alleles.shape
    # a gather along the allele column rather than (locus, allele) indexing
    per_copy = log_weights.expand(b, m, -1).gather(2, alleles)  # (B, M', P)
    if ploidy == 2:  # one addition: the same number sum(-1) gives, faster
        logits = per_copy[..., 0] + per_copy[..., 1]
    else:
        logits = per_copy.sum(-1)  # (B, M')
    uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-12, 1 - 1e-7)
    keys = logits - torch.log(-torch.log(uniform))
    top = keys.topk(n_targets, dim=1).indices.sort(dim=1).values  # (B, T)
    valid = torch.isfinite(logits.gather(1, top))
    return top, valid


def complete_genotypes(ploidy: int, n_alleles: int) -> Tensor:
    """Copy counts (G, A) of every genotype without missing copies."""
    table = allele_decoder(ploidy, n_alleles)
    table = torch.from_numpy(table[(table != MISSING).all(1)].astype(np.int64))
    return count_targets(table, n_alleles)


def genotype_log_probs(logits: Tensor, genotypes: Tensor) -> Tensor:
    """Log-score (…, G) of each complete genotype from copy-count logits (…, A, P+1).

    Alleles are scored independently, then renormalised over the genotypes whose
    counts sum to P.
    """
    log_p = logits.log_softmax(-1)  # (…, A, P + 1)
    index = genotypes.T.expand(*log_p.shape[:-2], -1, -1)  # (…, A, G)
    scores = log_p.gather(-1, index).sum(-2)  # (…, G)
    return scores.log_softmax(-1)


def allele_count_loss(
    logits: Tensor, counts: Tensor, valid: Tensor, complete: Tensor
) -> tuple[Tensor, float]:
    """Cross-entropy of copy-count logits (B, T, A, P + 1) against ``counts``
    (B, T, A), averaged over valid (B, T) targets, and the share of valid targets
    whose most probable complete genotype (``complete`` (G, A)) is right."""
    losses = F.cross_entropy(logits.flatten(0, 2), counts.flatten(), reduction="none")
    weight = valid[..., None].expand_as(counts).flatten().float()
    loss = (losses * weight).sum() / weight.sum().clamp(min=1)
    with torch.no_grad():
        best = genotype_log_probs(logits, complete).argmax(-1)  # (B, T)
        correct = (complete[best] == counts).all(-1)
        accuracy = (correct & valid).sum() / valid.sum().clamp(min=1)
    return loss, float(accuracy)


class MaskedMarkerTask:
    """Batches of individuals -> masked inputs, targets and loss.

    ``frequencies`` (M, A) must come from the training individuals only.
    """

    def __init__(
        self, genotypes: Genotypes, frequencies: np.ndarray, config: MaskedConfig
    ):
        self.genotypes, self.config = genotypes, config
        self.log_weights = target_log_weights(frequencies, config.frequency_scaler)
        self.n_alleles, self.ploidy = genotypes.n_alleles, genotypes.ploidy
        self.complete = complete_genotypes(self.ploidy, self.n_alleles)
        n_inputs = max(1, round(config.input_fraction * genotypes.n_markers))
        self.n_inputs = n_inputs
        self.n_targets = max(1, round(config.target_fraction * n_inputs))

    def select_inputs(
        self, alleles: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Alleles (B, M', P) at a random subset of ``input_fraction`` of the loci
        (the same for the whole batch) and those loci (M',), in map order."""
        m = alleles.shape[1]
        if self.n_inputs >= m:
            return alleles, torch.arange(m)
        inputs = torch.randperm(m, generator=generator)[: self.n_inputs].sort().values
        return alleles[:, inputs], inputs

    def batch(self, rows: np.ndarray, generator: torch.Generator):
        """Masked alleles (B, M', P), input loci (M',), targets (B, T), validity,
        copy counts (B, T, A)."""
        alleles = torch.from_numpy(
            self.genotypes.alleles[np.sort(rows)].astype(np.int64)
        )
        alleles, inputs = self.select_inputs(alleles, generator)
        weights = self.log_weights
        if len(inputs) < len(weights):  # else inputs are every locus, in order
            weights = weights.index_select(0, inputs)
        targets, valid = sample_targets(alleles, weights, self.n_targets, generator)
        copies = targets[..., None].expand(-1, -1, self.ploidy)  # (B, T, P)
        target_alleles = alleles.gather(1, copies)
        counts = count_targets(target_alleles, self.n_alleles)  # (B, T, A)
        masked = alleles.scatter(1, copies, self.n_alleles + 1)  # the mask id
        return masked, inputs, targets, valid, counts

    # under torchrun every rank draws the whole batch's inputs and targets from
    # one seed and computes the loss of its ``share`` of the rows: the ranks
    # together take the very step one process takes (see train.Trainer)
    shares_batches = True

    def _forward(
        self, model, rows, generator, share: slice = slice(None)
    ) -> tuple[Tensor, dict]:
        masked, inputs, targets, valid, counts = self.batch(rows, generator)
        device = model_device(model)  # drawn on the CPU, computed on the device
        masked, targets, valid, counts = (
            t[share].to(device) for t in (masked, targets, valid, counts)
        )
        logits = model(masked, inputs.to(device), targets)  # (B, T, A, P + 1)
        complete = self.complete.to(device)
        loss, accuracy = allele_count_loss(logits, counts, valid, complete)
        return loss, {"accuracy": accuracy}

    def epoch_order(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.genotypes.epoch_order(rows, rng)

    def loss(
        self,
        model,
        rows: np.ndarray,
        generator: torch.Generator,
        share: slice = slice(None),
    ):
        if share == slice(None):
            return self._forward(model, rows, generator)
        return self._forward(model, rows, generator, share)

    def evaluate(
        self, model, rows: np.ndarray, train_rows=None, batch_size: int = 32
    ) -> dict:
        """Loss and genotype accuracy on ``rows`` with fixed targets (seed 0)."""
        generator = torch.Generator().manual_seed(0)
        totals, n = {"loss": 0.0, "accuracy": 0.0}, 0
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            loss, metrics = self._forward(model, part, generator)
            totals["loss"] += float(loss) * len(part)
            totals["accuracy"] += metrics["accuracy"] * len(part)
            n += len(part)
        return {k: v / n for k, v in totals.items()}
