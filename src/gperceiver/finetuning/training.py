"""Finetuning step 4, train: every ensemble member (and, with separate blocks,
every block's model), in one or two phases, on the additive path's
out-of-sample residuals."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import digest
from ..data import Genotypes
from ..device import as_device, autocast, model_device
from ..tasks.phenotype import PhenotypeTask
from ..train import TrainConfig, Trainer
from .additive import AdditivePath, fit_additive_path
from .inputs import _only_environment
from .model import _freeze, build_model, encoder_features
from .save import save_member


def _train_member(
    model,
    genotypes,
    train,
    val,
    settings,
    train_cfg,
    scaling,
    directory,
    pretrained: bool,
    additive: AdditivePath | None,
    data_identity: dict,
    resume: bool = True,
    feature_cache: dict | None = None,
    copies=None,
):
    """Train one model in place (two phases when ``pretrained``, the second
    always with panel ``copies``, :class:`~.panel.PanelCopies`).

    ``data_identity`` (with the model's starting weights, its records and
    settings) goes into each phase's checkpoint: a rerun into the same directory
    with another trait, other folds or settings is refused, never resumed.

    With an ``additive`` path, the model starts from its fit on the training
    records and the network learns what it misses *out of sample*: its targets
    are the residuals of leave-one-out GBLUP predictions (in-sample GBLUP fits its
    own training records far better than new ones). It stops early on ``val``;
    the path refitted on training and validation records is put in at the end.
    """
    val_rows = None if val is None else np.arange(len(val.rows))
    both = train.join(val)
    fit_rows = np.arange(len(train.rows))
    shifted_val = None if val is None else val_rows + len(train.rows)
    offset = None
    if additive is not None:
        model.additive.load_state_dict(additive.trained)
        offset = additive.offset
    if pretrained:
        _freeze(model, set())
        features = None
        if model.head_config.head == "pool":
            genotypes_id = data_identity["genotypes"]
            features = frozen_features(
                model, genotypes, both.rows, feature_cache, genotypes_id, copies
            )
        task = PhenotypeTask(
            genotypes, both, settings.objective, scaling, features, offset, copies
        )
        # the head on cached features takes seconds: one checkpoint at its end
        # (a killed run redoes the phase) instead of one per evaluation
        phase1 = TrainConfig(
            **{
                **asdict(train_cfg),
                "epochs": settings.head_epochs,
                "max_steps": None,
                "checkpoint_every": HEAD_PHASE_CHECKPOINT_EVERY,
            }
        )
        identity = _identity(model, both, len(fit_rows), settings, data_identity)
        Trainer(model, task, phase1, directory / "phase1", resume, identity).fit(
            fit_rows, shifted_val
        )
        if settings.unfreeze:
            _freeze(model, set(settings.unfreeze.split(",")))
            train_cfg = TrainConfig(
                **{**asdict(train_cfg), "lr": train_cfg.lr * settings.unfreeze_lr_scale}
            )
    if not pretrained or settings.unfreeze or copies is not None:
        task = PhenotypeTask(
            genotypes, both, settings.objective, scaling, None, offset, copies
        )
        identity = _identity(model, both, len(fit_rows), settings, data_identity)
        Trainer(model, task, train_cfg, directory / "train", resume, identity).fit(
            fit_rows, shifted_val
        )
    model.eval()
    with torch.no_grad(), autocast(model_device(model)):
        task.evaluate(model, fit_rows[:1], train_rows=fit_rows)  # final calibration
    if additive is not None:
        model.additive.load_state_dict(additive.final)


# steps between the head phase's checkpoints: more than it ever takes, so that
# it checkpoints once, when it ends
HEAD_PHASE_CHECKPOINT_EVERY = 10**9
ENCODER = ("embed.", "encoder.")  # the parts a pretrained encoder provides


def frozen_features(
    model,
    genotypes: Genotypes,
    rows: np.ndarray,
    cache: dict | None = None,
    genotypes_id: str | None = None,
    copies=None,
) -> torch.Tensor:
    """The frozen encoder's pooled features (len(rows), 2D) of genotype ``rows``.

    ``cache`` (a dict the caller keeps, e.g. one per cross-validation) holds the
    features of every individual, computed once per encoder and genotype set and
    then indexed: a frozen encoder sees genotypes only and, in eval mode, each
    row's features depend on its own genotype alone, so every fold and ensemble
    member reads the same values (up to batch-size rounding) without recomputing
    them. ``genotypes_id``: their fingerprint, if already computed. A model with
    a panel reads its fold's copies ``copies`` (its features are then never
    cached: the panel is the fold's).
    """
    if cache is None or copies is not None:
        return encoder_features(model, genotypes, rows, copies=copies)
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER)}
    key = (digest(encoder), genotypes_id or genotypes.fingerprint())
    if key not in cache:
        every = np.arange(genotypes.n_individuals)
        cache[key] = encoder_features(model, genotypes, every)
    return cache[key][torch.as_tensor(rows, dtype=torch.long)]


def _identity(model, records, n_train: int, settings, data_identity: dict) -> dict:
    """What shapes a finetuning phase besides its TrainConfig (see train.Trainer)."""
    return {
        # starting weights: architecture, seed, pretrained encoder, additive fit
        "model": model.state_dict(),
        "responses": [records.rows, records.response, records.weight, n_train],
        "finetune settings": asdict(settings),
        **data_identity,
    }


def train_members(
    plan,
    data,
    genotypes: Genotypes,
    out: Path,
    resume: bool = True,
    feature_cache: dict | None = None,
    device=None,
) -> tuple[list, list]:
    """Train and save (:func:`~gperceiver.finetuning.save.save_member`) every
    member: ``settings.ensemble`` seeds, each one joint model or, with
    ``separate_blocks``, one model per trained block. Returns the models and
    their layout entries (``dir``, ``seed_index``, ``block``,
    ``marker_weight_mix``). The additive path of a group is fitted once, for all
    seeds; ``feature_cache``: see :func:`frozen_features`. Each model is built and
    its additive path fitted on the CPU, then it trains on ``device`` (default the
    CPU)."""
    device = as_device(device)
    settings, train_cfg = plan.settings, plan.train
    trained_environments = np.flatnonzero(data.train.weight.sum(0) > 0).tolist()
    joint = not settings.separate_blocks or data.environment is not None
    groups = [None] if joint else trained_environments
    members, layout, additive_paths = [], [], {}
    data_identity = {"genotypes": genotypes.fingerprint()}  # one pass, every member
    for k in range(settings.ensemble):
        member_cfg = TrainConfig(**{**asdict(train_cfg), "seed": train_cfg.seed + k})
        for environment in groups:
            name = f"member-{k}" + (
                "" if environment is None else f"-block-{environment}"
            )
            torch.manual_seed(member_cfg.seed)
            model = build_model(plan, data, genotypes)
            train = _only_environment(data.train, environment)
            val = _only_environment(data.val, environment)
            if plan.head.additive and environment not in additive_paths:
                additive_paths[environment] = fit_additive_path(
                    model.additive, genotypes, train, val, data.scaling, plan.prior
                )
            additive = additive_paths.get(environment)
            model.to(device)
            _train_member(
                model,
                genotypes,
                train,
                val,
                settings,
                member_cfg,
                data.scaling,
                out / name,
                plan.pretrained_state is not None,
                additive,
                data_identity,
                resume,
                feature_cache,
                None if data.panel is None else data.panel.copies,
            )
            save_member(out / name, model, genotypes)
            members.append(model)
            layout.append(
                {
                    "dir": name,
                    "seed_index": k,
                    "block": environment,
                    "marker_weight_mix": None if additive is None else additive.mix,
                }
            )
    return members, layout
