"""Finetuning step 3, build the model: a phenotype model (with covariates, an
environment phenotype model), its marker inputs attached and pretrained weights
loaded; and the parts frozen while a new head trains."""

from __future__ import annotations

import numpy as np
import torch

from ..data import Genotypes, genotype_batches
from ..device import autocast, model_device
from ..marker_graph import attach
from ..nn.environment import EnvironmentPhenotypeModel
from ..nn.heads import PhenotypeModel


def _new_model(model_cfg, head_cfg, env_cfg, markers, environment, n_environments):
    """A :class:`PhenotypeModel`, or with ``env_cfg`` an
    :class:`EnvironmentPhenotypeModel` (zero covariates when loading weights)."""
    if env_cfg is None:
        return PhenotypeModel(
            model_cfg, head_cfg, markers.relative_pos(), markers.chrom
        )
    if environment is None:
        shape = (n_environments, env_cfg.n_times, env_cfg.n_covariates)
        environment = {
            "values": torch.zeros(shape),
            "has": torch.zeros(n_environments, dtype=torch.bool),
        }
    values, has = environment["values"], environment["has"]
    if len(values) < n_environments:  # blocks with phenotypes beyond the covariates
        pad = n_environments - len(values)
        values = torch.cat([values, values.new_zeros(pad, *values.shape[1:])])
        has = torch.cat([has, has.new_zeros(pad)])
    return EnvironmentPhenotypeModel(
        model_cfg, head_cfg, env_cfg, markers.relative_pos(), markers.chrom, values, has
    )


def _freeze(model: PhenotypeModel, trainable: set[str]) -> None:
    """Freeze the pretrained parts except ``trainable`` (embed, encoder); the
    panel's fitted attention stays frozen always."""
    for name, param in model.named_parameters():
        part = name.split(".", 1)[0]
        frozen = part in ("embed", "encoder") and part not in trainable
        param.requires_grad = not frozen and part != "panel"


@torch.no_grad()
def encoder_features(
    model: PhenotypeModel,
    genotypes: Genotypes,
    rows: np.ndarray,
    batch_size: int = 64,
    copies=None,
) -> torch.Tensor:
    """Pooled encoder features (N, D) of genotype ``rows`` in eval mode, float32
    on the model's device; ``copies`` (:class:`~gperceiver.finetuning.panel.
    PanelCopies`) of a model with a panel (None: computed from its panel)."""
    model.eval()
    device = model_device(model)
    marker_idx = torch.arange(genotypes.n_markers, device=device)
    parts = []
    for part, alleles in genotype_batches(genotypes, rows, batch_size, device):
        copy = batch_copy(model, genotypes, part, copies)
        with autocast(device):
            parts.append(model.features(alleles, marker_idx, copy))
    return torch.cat(parts).float()


def batch_copy(model, genotypes: Genotypes, rows, copies=None):
    """The panel copies ``(B, M, G)`` of genotype ``rows`` on the model's device:
    from the cache ``copies`` (:class:`~gperceiver.finetuning.panel.PanelCopies`)
    when given, else from the model's panel; None for a model without one."""
    if getattr(model, "panel", None) is None:
        return None
    if copies is not None:
        return copies.take(rows).to(model_device(model))
    return model.panel_copy(genotypes, rows)


def build_model(plan, data, genotypes: Genotypes) -> PhenotypeModel:
    """A new model for ``plan`` (:class:`~gperceiver.finetuning.settings.FinetunePlan`)
    and ``data`` (:class:`~gperceiver.finetuning.inputs.FinetuneData`): marker inputs
    attached, the pretrained encoder's weights loaded (seed torch first)."""
    model = _new_model(
        plan.model,
        plan.head,
        plan.environment,
        genotypes.markers,
        data.environment,
        plan.n_environments,
    )
    attach(model.embed, data.graph, data.annotations)
    if data.panel is not None:
        data.panel.attach(model.panel)
    if plan.pretrained_state is not None:
        model.load_state_dict(plan.pretrained_state, strict=False)
    return model
