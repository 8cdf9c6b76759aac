"""Phenotype objectives: every block is predicted in one pass, the loss covers the
(individual, block) records that exist.

Shape letters: B batch of individuals, E blocks, K outputs per block, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Genotypes, genotype_batches
from ..device import model_device, to_numpy

OBJECTIVES = ("mse", "huber", "binary", "multiclass", "ordinal", "ranking")


@dataclass
class Records:
    """Phenotype records as matrices over (individual, block).

    ``response`` (N, E) is the mean of the records (NaN where none), ``weight``
    (N, E) their count; ``rows`` (N,) index the individuals in the genotypes.
    """

    rows: np.ndarray
    response: np.ndarray
    weight: np.ndarray

    @classmethod
    def from_table(
        cls, table: pd.DataFrame, genotypes: Genotypes, n_environments: int
    ) -> Records:
        index = genotypes.index_of(table["name"])
        rows, inverse = np.unique(index, return_inverse=True)
        total = np.zeros((len(rows), n_environments))
        count = np.zeros((len(rows), n_environments))
        environment = table["block"].to_numpy()
        np.add.at(
            total, (inverse, environment), table["response"].to_numpy(dtype=float)
        )
        np.add.at(count, (inverse, environment), 1.0)
        with np.errstate(invalid="ignore"):
            response = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return cls(rows, response, count)

    def subset(self, keep: np.ndarray) -> Records:
        return Records(self.rows[keep], self.response[keep], self.weight[keep])

    def join(self, other: Records | None) -> Records:
        """These records followed by ``other``'s (None: these alone)."""
        if other is None:
            return self
        return Records(
            np.concatenate([self.rows, other.rows]),
            np.concatenate([self.response, other.response]),
            np.concatenate([self.weight, other.weight]),
        )


@dataclass
class Scaling:
    """Per-block centre and scale of a regression response, from training records."""

    mean: np.ndarray  # (E,)
    sd: np.ndarray  # (E,)

    @classmethod
    def fit(cls, records: Records) -> Scaling:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nansum(records.response * records.weight, 0) / records.weight.sum(
                0
            )
            var = np.nansum(
                records.weight * (records.response - mean) ** 2, 0
            ) / records.weight.sum(0)
        mean = np.nan_to_num(mean)
        sd = np.where(np.nan_to_num(var) > 0, np.sqrt(np.nan_to_num(var)), 1.0)
        return cls(mean, sd)

    @classmethod
    def identity(cls, n_environments: int) -> Scaling:
        return cls(np.zeros(n_environments), np.ones(n_environments))


def n_outputs(objective: str, n_classes: int) -> int:
    return n_classes if objective == "multiclass" else 1


def class_count(table: pd.DataFrame, objective: str, source: str) -> int:
    """Number of classes of a categorical response (0..C-1 integers)."""
    if objective not in ("binary", "multiclass", "ordinal"):
        return 0
    y = table["response"].to_numpy()
    if (y != np.round(y)).any() or (y < 0).any():
        raise ValueError(
            f"{source}: the {objective} objective needs responses coded 0, 1, 2, ... "
            "(integers from 0)"
        )
    n = int(y.max()) + 1
    if objective == "binary" and n > 2:
        raise ValueError(
            f"{source}: the binary objective needs responses 0/1; "
            "use multiclass or ordinal"
        )
    return max(n, 2)


def objective_loss(objective: str, out: Tensor, y: Tensor, w: Tensor, model) -> Tensor:
    """Weighted mean loss over observed (individual, block) cells.

    ``out`` (B, E, K) model outputs, ``y`` (B, E) targets (NaN = no record, already
    scaled for regression), ``w`` (B, E) record counts.
    """
    seen = w > 0
    y0 = torch.where(seen, y, torch.zeros_like(y))
    score = out[..., 0]
    if objective == "mse":
        cell = (score - y0) ** 2
    elif objective == "huber":
        cell = F.huber_loss(score, y0, reduction="none", delta=1.0)
    elif objective == "binary":
        cell = F.binary_cross_entropy_with_logits(score, y0, reduction="none")
    elif objective == "multiclass":
        cell = F.cross_entropy(out.transpose(1, 2), y0.long(), reduction="none")
    elif objective == "ordinal":
        cell = -ordinal_log_probs(score, model.thresholds()).gather(
            -1, y0.long()[..., None]
        )[..., 0]
    elif objective == "ranking":
        return ranking_loss(score, y, seen)
    else:
        raise ValueError(f"unknown objective {objective!r}: use one of {OBJECTIVES}")
    return (cell * w).sum() / w.sum().clamp(min=1)


def ordinal_log_probs(score: Tensor, thresholds: Tensor) -> Tensor:
    """Cumulative-logit class log-probabilities (B, E, C) from scores (B, E).

    ``P(y <= c) = sigmoid(threshold[e, c] - score)``.
    """
    cum = torch.sigmoid(thresholds[None] - score[..., None])  # (B, E, C-1)
    ones = torch.ones_like(cum[..., :1])
    upper = torch.cat([cum, ones], -1)
    lower = torch.cat([torch.zeros_like(ones), cum], -1)
    return (upper - lower).clamp(min=1e-9).log()


def ranking_loss(score: Tensor, y: Tensor, seen: Tensor) -> Tensor:
    """RankNet loss over pairs of individuals *within the same block*.

    For every block and every pair with ``y_i > y_j`` (ties skipped), penalise
    ``softplus(-(s_i - s_j))``.
    """
    diff_y = y[:, None, :] - y[None, :, :]  # (B, B, E)
    diff_s = score[:, None, :] - score[None, :, :]
    pairs = seen[:, None, :] & seen[None, :, :] & (diff_y > 0)
    losses = F.softplus(-diff_s)[pairs]
    return losses.mean() if len(losses) else score.sum() * 0.0


def predictions(objective: str, out: Tensor, model, scaling: Scaling) -> np.ndarray:
    """Per-block predictions (B, E) on the response scale.

    Regression: de-scaled values; binary: probability of 1; multiclass and ordinal:
    expected class index (continuous, so Pearson r is meaningful); ranking: score.
    """
    out = out.float()  # bfloat16 under CUDA autocast
    score = out[..., 0]
    if objective in ("mse", "huber"):
        pred = to_numpy(score) * scaling.sd + scaling.mean
    elif objective == "binary":
        pred = to_numpy(torch.sigmoid(score))
    elif objective == "multiclass":
        probs = out.softmax(-1)
        classes = torch.arange(out.shape[-1], device=out.device)
        pred = to_numpy((probs * classes).sum(-1))
    elif objective == "ordinal":
        probs = ordinal_log_probs(score, model.thresholds().float()).exp()
        classes = torch.arange(probs.shape[-1], device=out.device)
        pred = to_numpy((probs * classes).sum(-1))
    else:
        pred = to_numpy(score)
    return pred


class PhenotypeTask:
    """Batches of individuals -> all-block outputs -> loss on their existing records."""

    def __init__(
        self,
        genotypes: Genotypes,
        records: Records,
        objective: str,
        scaling: Scaling,
        features: Tensor | None = None,
        offset: Tensor | None = None,
        copies=None,
    ):
        self.genotypes, self.records, self.objective, self.scaling = (
            genotypes,
            records,
            objective,
            scaling,
        )
        y = records.response
        if objective in ("mse", "huber"):
            y = (y - scaling.mean) / scaling.sd
        self.y = torch.from_numpy(np.nan_to_num(y, nan=np.nan)).float()
        self.w = torch.from_numpy(records.weight).float()
        self.marker_idx = torch.arange(genotypes.n_markers)
        self.features = features  # (N, ...) per record row, from a frozen encoder
        self.offset = offset  # (N, E) the model's fixed additive part per record row
        # a model with a panel: its copies of every genotype row (``take(rows)``,
        # gperceiver.finetuning.panel.PanelCopies), computed once per run
        self.copies = copies

    def _features(self, model, rows: np.ndarray, batch_size: int = 64) -> Tensor:
        device = model_device(model)
        if self.features is not None:
            return self.features[rows].to(device)
        batches = genotype_batches(
            self.genotypes, self.records.rows[rows], batch_size, device
        )
        marker_idx = self.marker_idx.to(device)
        if self.copies is None:
            return torch.cat([model.features(a, marker_idx) for _, a in batches])
        return torch.cat(
            [
                model.features(a, marker_idx, self.copies.take(part).to(device))
                for part, a in batches
            ]
        )

    def _outputs(self, model, rows: np.ndarray) -> Tensor:
        out = model.head(self._features(model, rows))
        if self.offset is None:
            return out
        return out + self.offset[rows][..., None].to(out.device)

    def _targets(self, model, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        device = model_device(model)
        return self.y[rows].to(device), self.w[rows].to(device)

    def loss(self, model, rows: np.ndarray, generator=None) -> tuple[Tensor, dict]:
        out = self._outputs(model, rows)
        y, w = self._targets(model, rows)
        return objective_loss(self.objective, out, y, w, model), {}

    def evaluate(
        self, model, rows: np.ndarray, train_rows: np.ndarray | None = None
    ) -> dict:
        """Validation loss, after calibrating the head's normalisation."""
        if train_rows is not None:
            model.calibrate(self._features(model, train_rows))
        out = self._outputs(model, rows)
        loss = objective_loss(self.objective, out, *self._targets(model, rows), model)
        return {"loss": float(loss)}
