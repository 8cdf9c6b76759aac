"""Twinned pretraining — the task named ``contrastive`` on the command line, trained
by :class:`~gperceiver.nn.twinned.TwinnedModel`: hide the same loci in two
individuals and predict how many allele copies the pair shares there (task
``both`` adds the masked-marker loss).

Shape letters: B individuals in a batch, K = B / 2 pairs (rows ``2k`` and ``2k + 1``
form pair ``k``), M' markers fed to the encoder, P ploidy, A real alleles, T targets
per pair.

**Shared copies** of two genotypes at a locus is the size of the multiset
intersection of their allele copies, ``sum over alleles a of min(n_a, m_a)`` where
``n_a`` and ``m_a`` count the copies of ``a`` in each; it lies in ``0..P`` for any
ploidy and number of alleles. Diploid: AB vs BB share 1, AA vs BB share 0.
Tetraploid: AABC vs ABBC share min(2, 1) + min(1, 2) + min(1, 1) = 3. A locus where
either individual has a missing copy is never a target, so the count is always over
P called copies each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Genotypes
from ..device import model_device
from ..nn.embeddings import count_targets
from .masked import MaskedConfig, MaskedMarkerTask, allele_count_loss, sample_targets

PRETRAIN_TASKS = ("masked", "contrastive", "both")


@dataclass
class TwinnedConfig:
    # weight of the masked-marker loss (both twins' copy counts at the pair's hidden
    # loci) added to the shared-copy loss in task "both"; 1 gives the two
    # cross-entropies equal say
    masked_weight: float = 1.0

    def __post_init__(self):
        if self.masked_weight < 0:
            raise ValueError(f"masked_weight must be >= 0, got {self.masked_weight}")


def shared_copies(first: Tensor, second: Tensor, n_alleles: int) -> Tensor:
    """Copies two genotypes share: allele ids (..., P) each -> (...) long.

    Missing (0) and mask copies count for nothing, so only call this on loci
    where both genotypes are complete.

    >>> shared_copies(torch.tensor([1, 1, 2, 3]), torch.tensor([1, 2, 2, 3]), 3)
    tensor(3)
    """
    return torch.minimum(
        count_targets(first, n_alleles), count_targets(second, n_alleles)
    ).sum(-1)


def pair_order(n: int, generator: torch.Generator) -> Tensor:
    """Random order (2 * (n // 2),) of batch positions ``0..n-1``; consecutive
    entries are pairs. With an odd ``n`` one random individual sits out."""
    return torch.randperm(n, generator=generator)[: n - n % 2]


class TwinnedTask(MaskedMarkerTask):
    """Batches of individuals -> random pairs, masked inputs and the twinned loss.

    Every individual of a batch is in at most one pair and is encoded once. A
    pair's targets are drawn as in the masked task, with weight the product of
    both individuals' weights (the sum of their log weights), and hidden in both.
    With ``masked_weight`` > 0 (task "both") the masked decoder also predicts each
    twin's copy counts at those loci, from the same encoding.

    ``frequencies`` (M, A) must come from the training individuals only.
    """

    # pairs are drawn within the batch: under torchrun each rank pairs its own rows
    shares_batches = False

    def __init__(
        self,
        genotypes: Genotypes,
        frequencies: np.ndarray,
        config: MaskedConfig,
        masked_weight: float = 0.0,
    ):
        super().__init__(genotypes, frequencies, config)
        self.masked_weight = masked_weight

    def batch(self, rows: np.ndarray, generator: torch.Generator):
        """Masked alleles (B, M', P) with pairs in rows 2k, 2k + 1, input loci (M',),
        targets (B, T) (equal within a pair), validity (B, T), shared copies (K, T)
        and copy counts (B, T, A)."""
        rows = np.sort(rows)
        order = pair_order(len(rows), generator).numpy()
        alleles = torch.from_numpy(self.genotypes.alleles[rows[order]].astype(np.int64))
        alleles, inputs = self.select_inputs(alleles, generator)
        first, second = alleles[0::2], alleles[1::2]  # (K, M', P) each
        # summing the log weights of both twins' 2P copies multiplies their weights
        targets, valid = sample_targets(
            torch.cat([first, second], dim=-1),
            self.log_weights[inputs],
            self.n_targets,
            generator,
        )  # (K, T)
        index = targets[..., None].expand(-1, -1, self.ploidy)
        shared = shared_copies(
            first.gather(1, index), second.gather(1, index), self.n_alleles
        )  # (K, T)
        targets = targets.repeat_interleave(2, dim=0)  # (B, T)
        valid = valid.repeat_interleave(2, dim=0)
        target_alleles = alleles.gather(
            1, targets[..., None].expand(-1, -1, self.ploidy)
        )
        counts = count_targets(target_alleles, self.n_alleles)  # (B, T, A)
        masked = alleles.clone()
        masked[torch.arange(len(alleles))[:, None], targets] = self.n_alleles + 1
        return masked, inputs, targets, valid, shared, counts

    def _forward(self, model, rows, generator) -> tuple[Tensor, dict]:
        if len(rows) < 2:
            raise ValueError("the twinned task needs at least two individuals a batch")
        batch = self.batch(rows, generator)
        device = model_device(model)  # drawn on the CPU, computed on the device
        masked, inputs, targets, valid, shared, counts = (t.to(device) for t in batch)
        table = model.embed.position_table()  # once for encoder and both decoders
        positions = model.embed.position(inputs, table)  # the targets read rows
        latents, tokens = model.encode(
            masked, inputs, return_tokens=True, table=table, positions=positions
        )
        logits = model.decode_pairs(latents, tokens, inputs, targets, table, positions)
        pair_valid = valid[0::2]  # (K, T)
        losses = F.cross_entropy(
            logits.flatten(0, 1), shared.flatten(), reduction="none"
        )
        weight = pair_valid.flatten().float()
        loss = (losses * weight).sum() / weight.sum().clamp(min=1)
        with torch.no_grad():
            right = (logits.argmax(-1) == shared) & pair_valid
            accuracy = right.sum() / pair_valid.sum().clamp(min=1)
        metrics = {"shared_loss": loss.item(), "shared_accuracy": accuracy.item()}
        if self.masked_weight > 0:
            count_logits = model.decode(
                latents, tokens, inputs, targets, table, positions
            )
            masked_loss, masked_accuracy = allele_count_loss(
                count_logits, counts, valid, self.complete.to(device)
            )
            loss = loss + self.masked_weight * masked_loss
            metrics.update(masked_loss=masked_loss.item(), accuracy=masked_accuracy)
        return loss, metrics

    def evaluate(
        self, model, rows: np.ndarray, train_rows=None, batch_size: int = 32
    ) -> dict:
        """Loss and accuracies on ``rows`` with fixed pairs and targets (seed 0),
        averaged over pairs; batches of ``batch_size`` (rounded down to even)."""
        if len(rows) < 2:
            raise ValueError("the twinned task needs at least two held-out individuals")
        generator = torch.Generator().manual_seed(0)
        step = max(2, batch_size - batch_size % 2)
        totals: dict[str, float] = {}
        n_pairs = 0
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            if len(part) < 2:
                continue
            loss, metrics = self._forward(model, part, generator)
            pairs = len(part) // 2
            for key, value in {"loss": float(loss), **metrics}.items():
                totals[key] = totals.get(key, 0.0) + value * pairs
            n_pairs += pairs
        return {k: v / n_pairs for k, v in totals.items()}
