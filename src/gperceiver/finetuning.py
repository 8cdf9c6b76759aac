"""Finetune a phenotype model (from scratch or from a pretrained encoder) and predict.

No leakage: response scaling and early stopping use training individuals only,
unless ``cv`` names a validation fold, which then steers early stopping (the user's
explicit choice; ``evaluate`` never does this, it splits the training folds).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .baselines import (
    Kernel,
    WeightedGBLUP,
    additive_effects,
    kernel_columns,
    kernel_effects,
    kernel_features,
    mixed_weights,
    relationship_mixes,
)
from .checkpoint import (
    FORMAT_VERSION,
    check_markers,
    load_model_config,
    load_weights,
    save_model,
    write_json,
)
from .data import EnvCovariates, Genotypes, Phenotypes
from .graph import GraphSettings, attach, marker_inputs, marker_sizes
from .io import InputError, InputWarning, read_marker_weights, write_chroms
from .nn.environment import EnvironmentConfig, EnvironmentPhenotypeModel
from .nn.heads import GaussianEffects, HeadConfig, MarkerEffects, PhenotypeModel
from .nn.perceiver import PerceiverConfig
from .params import resolve
from .pretraining import data_sizes, load_masked_model, split_individuals
from .tasks.finetune import (
    OBJECTIVES,
    PhenotypeTask,
    Records,
    Scaling,
    class_count,
    n_outputs,
    predictions,
)
from .train import TrainConfig, Trainer

TASK_NAME = "finetune"


@dataclass
class FinetuneSettings:
    objective: str = "mse"  # one of OBJECTIVES; every block shares it
    val_fraction: float = 0.1  # inner split of training individuals (without cv)
    # phase 1 (pretrained only): epochs training the new head with the encoder frozen;
    # the pool head then trains on cached encoder features, which costs ~nothing
    head_epochs: int = 40
    # phase 2: parts unfrozen after phase 1 ("" keeps everything frozen):
    # any of embed, encoder. Frozen by default: the pool head then trains on
    # cached features in seconds, where unfreezing costs a full training per fold
    unfreeze: str = ""
    unfreeze_lr_scale: float = (
        0.3  # phase-2 LR relative to lr: protects pretrained weights
    )
    ensemble: int = 1  # models with seeds seed, seed+1, ... averaged
    # one model per block instead of one joint model: environments with opposite
    # responses (wheat block 0 vs 2, r = -0.19) then cannot pull shared features
    # and a shared early-stopping point apart, at one training per block. Off by
    # default since the additive path fits every block's main effects exactly
    # (BENCHMARKS.md: wheat, the same accuracy at 60% of the time)
    separate_blocks: bool = False
    # inner validation (without cv): "individuals" held out, or "environments":
    # whole training blocks held out, the target of predicting new environments
    # (needs covariates; evaluate uses it for cv0 and cv00)
    val_split: str = "individuals"
    # None, or a TSV ``marker, weight`` of non-negative prior marker weights (a QTL
    # indicator, GWAS scores from other data) for the additive path: weighted
    # GBLUP/RKHS, with how much the prior counts (KERNEL_WEIGHT_MIXES, 0: not at
    # all) chosen by REML on the training records, jointly over blocks
    marker_weights: str | None = None

    def __post_init__(self):
        if self.val_split not in ("individuals", "environments"):
            raise ValueError(
                f"val_split must be individuals or environments, got {self.val_split!r}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {OBJECTIVES}, got {self.objective!r}"
            )
        parts = {p for p in self.unfreeze.split(",") if p}
        if parts - {"embed", "encoder"}:
            raise ValueError(
                f"unfreeze takes embed and/or encoder, got {self.unfreeze!r}"
            )
        if self.ensemble < 1:
            raise ValueError("ensemble must be at least 1")


# finetuning defaults differ from pretraining: fewer individuals, more regularisation
FINETUNE_DEFAULTS = {
    "epochs": 60,
    "patience": 6,
    "batch_size": 32,
    "lr": 3e-4,
    "weight_decay": 0.05,
    "warmup_steps": 20,
}


def _records_split(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    cv,
    val_fraction,
    seed,
    n_blocks: int | None = None,
    by_environment: bool = False,
):
    """Training and validation :class:`Records` (validation may be None).

    ``by_environment``: without ``cv``, hold out a share ``val_fraction`` of the
    blocks (at least one unless it is 0) instead of individuals.
    """
    n_blocks = n_blocks or phenotypes.n_blocks
    if cv is None and by_environment:
        blocks = phenotypes.blocks
        n_held = round(val_fraction * len(blocks))
        if val_fraction > 0 and len(blocks) > 1:
            n_held = max(1, n_held)
        held = np.random.default_rng(seed).choice(blocks, n_held, replace=False)
        is_held = phenotypes.table["block"].isin(held)
        train = Records.from_table(phenotypes.table[~is_held], genotypes, n_blocks)
        if not n_held:
            return train, None
        return train, Records.from_table(phenotypes.table[is_held], genotypes, n_blocks)
    if cv is not None:
        train_table, val_table = phenotypes.split(str(cv))
        if val_table.empty:
            raise ValueError(f"{phenotypes.source}: no row has cv == {cv!r}")
        train = Records.from_table(train_table, genotypes, n_blocks)
        val = Records.from_table(val_table, genotypes, n_blocks)
        return train, val
    records = Records.from_table(phenotypes.table, genotypes, n_blocks)
    fit, held = split_individuals(len(records.rows), val_fraction, seed)
    return records.subset(fit), (records.subset(held) if len(held) else None)


def _only_block(records: Records | None, block: int | None) -> Records | None:
    """Records with every other block blanked out (None: keep all)."""
    if records is None or block is None:
        return records
    keep = np.zeros(records.response.shape[1], dtype=bool)
    keep[block] = True
    present = records.weight[:, block] > 0
    response = np.where(keep, records.response, np.nan)[present]
    weight = np.where(keep, records.weight, 0.0)[present]
    return Records(records.rows[present], response, weight)


def _freeze(model: PhenotypeModel, trainable: set[str]) -> None:
    for name, param in model.named_parameters():
        part = name.split(".", 1)[0]
        param.requires_grad = part not in ("embed", "encoder") or part in trainable


@torch.no_grad()
def encoder_features(
    model: PhenotypeModel, genotypes: Genotypes, rows: np.ndarray, batch_size: int = 64
) -> torch.Tensor:
    """Pooled encoder features (N, D) of genotype ``rows`` in eval mode."""
    model.eval()
    marker_idx = torch.arange(genotypes.n_markers)
    parts = [
        model.features(
            torch.from_numpy(
                genotypes.alleles[rows[i : i + batch_size]].astype(np.int64)
            ),
            marker_idx,
        )
        for i in range(0, len(rows), batch_size)
    ]
    return torch.cat(parts)


def fit_additive(
    additive: MarkerEffects | GaussianEffects,
    genotypes: Genotypes,
    records: Records,
    scaling: Scaling,
    frequencies: np.ndarray,
    kept: np.ndarray,
    prior: np.ndarray | None,
    relationships: list[tuple[float, Kernel]],
) -> tuple[np.ndarray, float]:
    """Set the additive path: per block, REML GBLUP (``MarkerEffects``) or RKHS
    (``GaussianEffects``) on the individuals with a record (their mean response,
    scaled).

    ``relationships`` are the :func:`~gperceiver.baselines.relationship_mixes` of
    the individuals ``kept`` (``records.rows`` come first) for ``prior``, as
    ``(mix, Kernel)``: :class:`~gperceiver.baselines.WeightedGBLUP` chooses the
    mix (highest restricted likelihood summed over blocks, the first on a tie).
    Returns the leave-one-out predictions (N, E) of the records (NaN where none):
    what the additive path predicts for an individual it was not fitted on; and
    the mix.
    """
    gaussian = isinstance(additive, GaussianEffects)
    targets = {}  # block -> (rows of kept with a record, their scaled responses)
    for block in np.flatnonzero(records.weight.sum(0) > 0):
        seen = records.weight[:, block] > 0
        mean, sd = scaling.mean[block], scaling.sd[block]
        targets[block] = (
            np.flatnonzero(seen),
            (records.response[seen, block] - mean) / sd,
        )

    selection = WeightedGBLUP(relationships, gaussian).select(list(targets.values()))
    mix, relationship = selection.mix_, selection.relationship_.matrix
    weights = None if prior is None else mixed_weights(prior, mix)
    if gaussian:
        keep, column_scale = kernel_columns(frequencies, genotypes.ploidy, weights)
        features = kernel_features(
            genotypes.subset(individuals=kept), frequencies, keep, column_scale
        )
        additive.set_data(features, keep, frequencies, column_scale)
    loo = np.full(records.response.shape, np.nan)
    for block, (rows, y) in targets.items():
        part = genotypes.subset(individuals=kept[rows])
        options = {
            "marker_weights": weights,
            "relationship": relationship[np.ix_(rows, rows)],
        }
        if gaussian:
            fit = kernel_effects(
                part, y, frequencies, **options, features=features[rows]
            )
            additive.set_block(block, rows, fit)
        else:
            fit = additive_effects(part, y, frequencies, **options)
            additive.set_block(
                block, fit.intercept, fit.effects, frequencies, genotypes.ploidy
            )
        loo[rows, block] = fit.loo_predictions
    return loo, mix


@torch.no_grad()
def additive_offsets(
    additive, genotypes: Genotypes, rows: np.ndarray, batch_size=256
) -> torch.Tensor:
    """The additive path's outputs (N, E) for genotype ``rows``."""
    marker_idx = torch.arange(genotypes.n_markers)
    return torch.cat(
        [
            additive(
                torch.from_numpy(genotypes.alleles[rows[i : i + batch_size]]).long(),
                marker_idx,
            )
            for i in range(0, len(rows), batch_size)
        ]
    )


@dataclass
class AdditivePath:
    """The additive path of one training group, fitted once for all ensemble
    members (it depends on the records only)."""

    trained: dict[str, torch.Tensor]  # state fitted on the training records
    # (N, E) targets' offsets over train.join(val) rows: leave-one-out values for
    # training records, the path's predictions for validation ones
    offset: torch.Tensor
    final: dict[str, torch.Tensor]  # state refitted on training + validation records
    mix: float | None  # prior weight mix of the final fit (None: no prior)


def fit_additive_path(
    additive: MarkerEffects | GaussianEffects,
    genotypes: Genotypes,
    train: Records,
    val: Records | None,
    scaling: Scaling,
    prior: np.ndarray | None,
) -> AdditivePath:
    """Fit ``additive`` (a model's additive path, left in its final state)."""
    both = train.join(val)
    frequencies = genotypes.allele_frequencies(both.rows)
    kept = both.rows
    relationships = [
        (mix, Kernel(relationship, memory=0))
        for mix, relationship in relationship_mixes(
            genotypes.subset(individuals=kept), frequencies, prior
        )
    ]  # computed once for both fits, every block and every mix
    fit = partial(
        fit_additive, additive, genotypes, scaling=scaling, frequencies=frequencies,
        kept=kept, prior=prior, relationships=relationships,
    )  # fmt: skip

    def state():
        return {k: v.clone() for k, v in additive.state_dict().items()}

    loo, mix = fit(train)
    trained = state()
    offset = additive_offsets(additive, genotypes, both.rows)  # (N, E)
    seen = ~np.isnan(loo)  # training records get their leave-one-out value
    offset[: len(loo)][torch.from_numpy(seen)] = torch.from_numpy(loo[seen]).float()
    if val is not None:
        _, mix = fit(both)
    return AdditivePath(trained, offset, state(), None if prior is None else mix)


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
):
    """Train one model in place (two phases when ``pretrained``).

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
            features = encoder_features(model, genotypes, both.rows)
        task = PhenotypeTask(
            genotypes, both, settings.objective, scaling, features, offset
        )
        phase1 = TrainConfig(
            **{**asdict(train_cfg), "epochs": settings.head_epochs, "max_steps": None}
        )
        Trainer(model, task, phase1, directory / "phase1").fit(fit_rows, shifted_val)
        if settings.unfreeze:
            _freeze(model, set(settings.unfreeze.split(",")))
            train_cfg = TrainConfig(
                **{**asdict(train_cfg), "lr": train_cfg.lr * settings.unfreeze_lr_scale}
            )
    if not pretrained or settings.unfreeze:
        task = PhenotypeTask(genotypes, both, settings.objective, scaling, None, offset)
        Trainer(model, task, train_cfg, directory / "train").fit(fit_rows, shifted_val)
    model.eval()
    with torch.no_grad():
        task.evaluate(model, fit_rows[:1], train_rows=fit_rows)  # final calibration
    if additive is not None:
        model.additive.load_state_dict(additive.final)


def finetune(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    out,
    params: dict | None = None,
    typed: dict | None = None,
    pretrained=None,
    cv=None,
    covariates: EnvCovariates | None = None,
) -> list[PhenotypeModel]:
    """Train phenotype model(s) and save them to ``out``; returns the ensemble members.

    ``params``/``typed`` are flat dicts of :class:`PerceiverConfig`,
    :class:`HeadConfig`, :class:`TrainConfig`, :class:`FinetuneSettings` and
    :class:`~gperceiver.graph.GraphSettings` fields (and :class:`EnvironmentConfig`
    ones with covariates); an LD graph uses the training individuals only.
    With ``pretrained`` (a pretrain output directory) the encoder architecture and
    weights, marker graph and annotations included, come from there. With
    ``covariates`` one joint :class:`EnvironmentPhenotypeModel` per ensemble seed
    predicts every block that has covariates, including blocks without training records.
    """
    params, typed = dict(params or {}), dict(typed or {})
    sizes = data_sizes(genotypes)
    pretrained_state = None
    if pretrained is not None:
        masked, pre_config = load_masked_model(pretrained, genotypes)
        pretrained_state = {
            k: v
            for k, v in masked.state_dict().items()
            if k.startswith(("embed.", "encoder."))
        }
        params = {
            **pre_config["model"],
            **{k: v for k, v in params.items() if k not in pre_config["model"]},
        }
        _check_typed_architecture(typed, pre_config["model"], pretrained)
    objective = {**params, **typed}.get("objective", FinetuneSettings.objective)
    environment = None if covariates is None else _environment_inputs(covariates)
    if environment is not None and objective == "ordinal":
        raise InputError(
            "--objective",
            None,
            "the ordinal objective is not available with covariates",
            "use mse, huber, binary, multiclass or ranking",
        )
    n_classes = class_count(phenotypes.table, objective, phenotypes.source)
    n_blocks = phenotypes.n_blocks
    if environment is not None:
        n_blocks = max(n_blocks, int(covariates.blocks.max()) + 1)
    head_sizes = {
        "n_blocks": n_blocks,
        "n_outputs": n_outputs(objective, n_classes),
        "n_classes": n_classes if objective == "ordinal" else 0,
    }
    classes = (
        PerceiverConfig,
        HeadConfig,
        TrainConfig,
        FinetuneSettings,
        GraphSettings,
    )
    env_sizes = {}
    if environment is not None:
        classes += (EnvironmentConfig,)
        env_sizes = {
            "n_times": covariates.values.shape[1],
            "n_covariates": len(covariates.names),
        }
    model_cfg, head_cfg, train_cfg, settings, graph_cfg, *env_cfg = resolve(
        classes,
        FINETUNE_DEFAULTS,
        params,
        {**typed, **sizes, **head_sizes, **env_sizes},
        also_known=(EnvironmentConfig,),
    )
    if settings.objective not in ("mse", "huber") or environment is not None:
        # GBLUP is a regression fitted per seen block; environments can be new
        head_cfg = replace(head_cfg, additive=False)
    if head_cfg.additive and head_cfg.additive_kernel == "gaussian":
        if settings.separate_blocks:
            raise InputError(
                "--params",
                "key 'additive_kernel'",
                "the gaussian additive path needs one joint model",
                "set separate_blocks false or additive_kernel linear",
            )
    prior = None
    if settings.marker_weights:
        if not head_cfg.additive:
            raise InputError(
                "--params",
                "key 'marker_weights'",
                "marker weights act on the additive GBLUP/RKHS path, which is off "
                "here (additive false, an objective other than mse/huber, or "
                "covariates)",
                "remove marker_weights or use the additive path",
            )
        prior = read_marker_weights(settings.marker_weights, genotypes.markers)
    env_cfg = env_cfg[0] if env_cfg else None
    by_environment = settings.val_split == "environments"
    if by_environment and environment is None:
        raise InputError(
            "--params",
            "key 'val_split'",
            "holding out environments needs environment covariates",
            "pass --covariates or use val_split individuals",
        )
    train, val = _records_split(
        phenotypes,
        genotypes,
        cv,
        settings.val_fraction,
        train_cfg.seed,
        n_blocks,
        by_environment,
    )
    held = val if by_environment and cv is None else None  # training environments
    if head_cfg.additive and head_cfg.additive_kernel in (None, "gaussian"):
        # the kernel keeps the genotypes of every training and validation record
        kept = train.join(val).rows
        frequencies = genotypes.allele_frequencies(kept)
        keep, _ = kernel_columns(frequencies, genotypes.ploidy)
        auto = head_cfg.additive_kernel is None
        too_big = len(kept) * int(keep.sum()) > AUTO_GAUSSIAN_FLOATS
        if auto and (settings.separate_blocks or too_big):
            head_cfg = replace(head_cfg, additive_kernel="linear")
        else:
            head_cfg = replace(
                head_cfg,
                additive_kernel="gaussian",
                kernel_rows=len(kept),
                kernel_features=int(keep.sum()),
            )
    elif head_cfg.additive_kernel is None:
        head_cfg = replace(head_cfg, additive_kernel="linear")
    graph = annotations = None
    if pretrained is None:  # a pretrained encoder brings its own
        graph, annotations = marker_inputs(graph_cfg, genotypes, train.rows)
        model_cfg = replace(model_cfg, **marker_sizes(graph, annotations))
    else:
        _warn_unused_marker_inputs(graph_cfg, model_cfg, pretrained)
    if settings.objective not in ("mse", "huber"):
        scaling = Scaling.identity(n_blocks)
    elif environment is None:
        scaling = Scaling.fit(train)
    else:
        scaling = _environment_scaling(train, held)
    out = Path(out)
    trained_blocks = np.flatnonzero(train.weight.sum(0) > 0).tolist()
    if environment is not None:
        seen = train.join(held).weight.sum(0) > 0
        environment["standard"]["new_environment_scaling"] = _average_scaling(
            scaling, seen
        )
    joint = not settings.separate_blocks or environment is not None
    groups = [None] if joint else trained_blocks
    members, layout, additive_paths = [], [], {}
    for k in range(settings.ensemble):
        member_cfg = TrainConfig(**{**asdict(train_cfg), "seed": train_cfg.seed + k})
        for block in groups:
            name = f"member-{k}" + ("" if block is None else f"-block-{block}")
            torch.manual_seed(member_cfg.seed)
            model = _new_model(
                model_cfg, head_cfg, env_cfg, genotypes.markers, environment, n_blocks
            )
            attach(model.embed, graph, annotations)
            if pretrained_state is not None:
                model.load_state_dict(pretrained_state, strict=False)
            group_train, group_val = _only_block(train, block), _only_block(val, block)
            if head_cfg.additive and block not in additive_paths:
                additive_paths[block] = fit_additive_path(
                    model.additive, genotypes, group_train, group_val, scaling, prior
                )
            additive = additive_paths.get(block)
            _train_member(
                model,
                genotypes,
                group_train,
                group_val,
                settings,
                member_cfg,
                scaling,
                out / name,
                pretrained_state is not None,
                additive,
            )
            save_model(out / name, model.eval(), {"task": TASK_NAME}, genotypes.markers)
            members.append(model)
            layout.append(
                {
                    "dir": name,
                    "seed_index": k,
                    "block": block,
                    "marker_weight_mix": None if additive is None else additive.mix,
                }
            )
    write_json(
        {
            "task": TASK_NAME,
            "format_version": FORMAT_VERSION,
            "model": model_cfg.to_dict(),
            "head": head_cfg.to_dict(),
            "train": asdict(train_cfg),
            "finetune": asdict(settings),
            "graph": asdict(graph_cfg),
            "scaling": {"mean": scaling.mean.tolist(), "sd": scaling.sd.tolist()},
            "members": layout,
            "environment": None if env_cfg is None else env_cfg.to_dict(),
            "covariates": None if environment is None else environment["standard"],
            "pretrained": None if pretrained is None else str(pretrained),
            "validation": f"cv == {cv}"
            if cv is not None
            else f"inner split of {settings.val_fraction:.0%} of training individuals",
            "markers": genotypes.markers.fingerprint(),
        },
        out / "config.json",
    )
    write_chroms(genotypes.markers, out / "markers.tsv")
    return members


@dataclass
class Predictor:
    """A finetuned ensemble ready to predict.

    ``layout[i]`` says which ensemble seed member ``i`` belongs to and which block it
    predicts (None: every block).
    """

    members: list[PhenotypeModel]
    layout: list[dict]
    objective: str
    scaling: Scaling

    @torch.no_grad()
    def predict(
        self, genotypes: Genotypes, rows=None, batch_size: int = 64
    ) -> np.ndarray:
        """Predictions (N, E, K) for genotype ``rows`` (default: all); K seeds.

        Blocks that no member predicts are NaN.
        """
        rows = np.arange(genotypes.n_individuals) if rows is None else np.asarray(rows)
        marker_idx = torch.arange(genotypes.n_markers)
        n_seeds = 1 + max(entry["seed_index"] for entry in self.layout)
        n_blocks = self.members[0].head_config.n_blocks
        out = np.full((len(rows), n_blocks, n_seeds), np.nan)
        for model, entry in zip(self.members, self.layout, strict=True):
            model.eval()
            parts = [
                predictions(
                    self.objective,
                    model(
                        torch.from_numpy(
                            genotypes.alleles[rows[i : i + batch_size]].astype(np.int64)
                        ),
                        marker_idx,
                    ),
                    model,
                    self.scaling,
                )
                for i in range(0, len(rows), batch_size)
            ]
            values = np.concatenate(parts) if parts else np.zeros((0, n_blocks))
            columns = slice(None) if entry["block"] is None else entry["block"]
            out[:, columns, entry["seed_index"]] = values[:, columns]
        return out


# the auto additive path is gaussian while the kept genotypes (individuals x
# polymorphic allele columns) take at most this many floats (200 MB)
AUTO_GAUSSIAN_FLOATS = 50_000_000

# model keys that change no weight: free to differ from the pretrained encoder's
RUNTIME_MODEL_KEYS = {"chunk_size", "checkpoint_attention", "dropout"}


def _check_typed_architecture(typed: dict, pretrained_model: dict, directory) -> None:
    """Refuse a typed option that would change the pretrained encoder's shape (its
    weights would not fit, or would be dropped without a word)."""
    for key, value in typed.items():
        if key in RUNTIME_MODEL_KEYS or key not in pretrained_model:
            continue
        if value != pretrained_model[key]:
            raise InputError(
                f"option for {key!r}",
                None,
                f"{value!r} differs from the pretrained encoder in {directory} "
                f"({pretrained_model[key]!r})",
                "drop the option to use the pretrained value, or pretrain again",
            )


def _warn_unused_marker_inputs(graph_cfg, model_cfg, pretrained) -> None:
    """Say so when a marker graph or annotations are asked for but the pretrained
    encoder, which keeps its own marker inputs, was pretrained without them."""
    unused = []
    if graph_cfg.marker_graph and not model_cfg.n_graph_edges:
        unused.append("--marker-graph")
    if graph_cfg.annotations and not (
        model_cfg.n_annotations or model_cfg.annotation_levels
    ):
        unused.append("--annotations")
    if unused:
        warnings.warn(
            f"{' and '.join(unused)} ignored: the pretrained encoder in {pretrained} "
            "was pretrained without them (pretrain with them to use them)",
            InputWarning,
            stacklevel=3,
        )


# -- environment covariates (used only when covariates are given) -------------------
def _environment_inputs(covariates: EnvCovariates) -> dict:
    """Standardised covariates per block slot: ``values`` (E, T, C) float32 tensor
    (zeros for blocks without covariates), ``has`` (E,) bool, and ``standard``,
    the centre and scale per covariate kept in the model's config.

    Each covariate is centred and scaled over every block and time point that has
    it (no response is used, like a relationship matrix from all genotypes).
    """
    values = covariates.values
    mean = values.mean((0, 1))
    sd = values.std((0, 1))
    sd = np.where(sd > 0, sd, 1.0)
    standard = {
        "names": list(covariates.names),
        "n_times": values.shape[1],
        "mean": mean.tolist(),
        "sd": sd.tolist(),
    }
    n_blocks = int(covariates.blocks.max()) + 1
    full = np.zeros((n_blocks, *values.shape[1:]), dtype=np.float32)
    full[covariates.blocks] = (values - mean) / sd
    has = np.zeros(n_blocks, dtype=bool)
    has[covariates.blocks] = True
    return {
        "values": torch.from_numpy(full),
        "has": torch.from_numpy(has),
        "standard": standard,
    }


def _environment_scaling(train: Records, held: Records | None) -> Scaling:
    """Per-block scaling from the training records and the ``held`` out inner
    validation environments (training data of the caller, so that their loss
    measures within-environment fit); blocks without records get the average
    centre and scale (:func:`_average_scaling`), so their predictions land on the
    usual scale."""
    both = train.join(held)
    scaling = Scaling.fit(both)
    seen = both.weight.sum(0) > 0
    scaling.mean[~seen], scaling.sd[~seen] = _average_scaling(scaling, seen)
    return scaling


def _average_scaling(scaling: Scaling, seen: np.ndarray) -> tuple[float, float]:
    """Centre and scale for an environment without records: the averages over the
    ``seen`` (E,) blocks."""
    return float(scaling.mean[seen].mean()), float(scaling.sd[seen].mean())


def _new_environments(predictor: Predictor, covariates: EnvCovariates, config) -> None:
    """Give the predictor's models ``covariates`` for their blocks, growing the
    per-block tables for blocks the model never had (predicted like an environment
    without records: average centre and scale, no intercept of its own)."""
    standard = config["covariates"]
    names, n_times = standard["names"], standard["n_times"]
    source = covariates.source
    if list(covariates.names) != names:
        raise InputError(
            source,
            "line 1",
            f"covariate columns {list(covariates.names)} differ from the model's",
            f"use the columns the model was finetuned with, in order: {names}",
        )
    if covariates.values.shape[1] != n_times:
        raise InputError(
            source,
            None,
            f"{covariates.values.shape[1]} time points per block; the model was "
            f"finetuned with {n_times}",
            f"give every block the {n_times} time points of the training covariates",
        )
    values = (covariates.values - np.array(standard["mean"])) / np.array(standard["sd"])
    values = torch.as_tensor(values, dtype=torch.float32)
    blocks = torch.as_tensor(covariates.blocks)
    for model in predictor.members:
        model.set_covariates(blocks, values)
    grown = predictor.members[0].head_config.n_blocks - len(predictor.scaling.mean)
    centre, scale = standard["new_environment_scaling"]
    predictor.scaling = Scaling(
        np.concatenate([predictor.scaling.mean, np.full(grown, centre)]),
        np.concatenate([predictor.scaling.sd, np.full(grown, scale)]),
    )


def _new_model(model_cfg, head_cfg, env_cfg, markers, environment, n_blocks):
    """A :class:`PhenotypeModel`, or with ``env_cfg`` an
    :class:`EnvironmentPhenotypeModel` (zero covariates when loading weights)."""
    if env_cfg is None:
        return PhenotypeModel(
            model_cfg, head_cfg, markers.relative_pos(), markers.chrom
        )
    if environment is None:
        shape = (n_blocks, env_cfg.n_times, env_cfg.n_covariates)
        environment = {
            "values": torch.zeros(shape),
            "has": torch.zeros(n_blocks, dtype=torch.bool),
        }
    values, has = environment["values"], environment["has"]
    if len(values) < n_blocks:  # blocks with phenotypes beyond the covariates
        pad = n_blocks - len(values)
        values = torch.cat([values, values.new_zeros(pad, *values.shape[1:])])
        has = torch.cat([has, has.new_zeros(pad)])
    return EnvironmentPhenotypeModel(
        model_cfg, head_cfg, env_cfg, markers.relative_pos(), markers.chrom, values, has
    )


def load_predictor(
    directory,
    genotypes: Genotypes | None = None,
    data_path=None,
    covariates: EnvCovariates | None = None,
) -> Predictor:
    """Load a finetune output directory; checks the marker map of ``genotypes``.

    ``covariates`` (for a model finetuned with covariates) replace or add the
    covariates of their blocks, so environments never seen in training, with
    block ids beyond the model's, are predicted too.
    """
    directory = Path(directory)
    config, markers = load_model_config(directory)
    if config.get("task") != TASK_NAME:
        raise InputError(
            directory,
            None,
            f"holds a {config.get('task')!r} model, not a finetuned one",
            "pass the --out directory of gperceiver finetune",
        )
    if genotypes is not None:
        check_markers(markers, genotypes.markers, directory, data_path or "genotypes")
    model_cfg = PerceiverConfig.from_dict(config["model"])
    head_cfg = HeadConfig(**config["head"])
    env_cfg = config.get("environment")
    env_cfg = None if env_cfg is None else EnvironmentConfig(**env_cfg)
    members = [
        load_weights(
            directory / entry["dir"],
            _new_model(model_cfg, head_cfg, env_cfg, markers, None, head_cfg.n_blocks),
        )
        for entry in config["members"]
    ]
    scaling = Scaling(
        np.array(config["scaling"]["mean"]), np.array(config["scaling"]["sd"])
    )
    predictor = Predictor(
        members, config["members"], config["finetune"]["objective"], scaling
    )
    if covariates is not None:
        if config.get("covariates") is None:
            raise InputError(
                covariates.source,
                None,
                f"the model in {directory} was finetuned without covariates",
                "finetune with --covariates, or predict without them",
            )
        _new_environments(predictor, covariates, config)
    return predictor


def prediction_table(
    predictor: Predictor, genotypes: Genotypes, blocks=None
) -> pd.DataFrame:
    """``name, block, prediction[, sd]`` for every individual x block."""
    values = predictor.predict(genotypes)  # (N, E, K)
    n, e, k = values.shape
    blocks = np.arange(e) if blocks is None else np.asarray(blocks)
    frame = pd.DataFrame(
        {
            "name": np.repeat(genotypes.names, len(blocks)),
            "block": np.tile(blocks, n),
            "prediction": values[:, blocks].mean(-1).ravel(),
        }
    )
    if k > 1:
        frame["sd"] = values[:, blocks].std(-1, ddof=1).ravel()
    return frame


def _workdir(cache: dict) -> Path:
    if "workdir" not in cache:
        import tempfile

        cache["_tmp"] = tempfile.TemporaryDirectory(prefix="gperceiver-")
        cache["workdir"] = cache["_tmp"].name
    return Path(cache["workdir"])


def _fold_predictions(train, validation, genotypes, cache, pretrained) -> np.ndarray:
    """Finetune on ``train`` (inner split stops early), predict ``validation``.

    With covariates in ``cache`` the model uses them; when the scheme holds out
    environments (cv0, cv00) the inner split then holds out training blocks.
    """
    fold = "-".join(sorted(map(str, validation["cv"].unique())))
    scheme = cache.get("scheme", "cv1")
    if scheme != "cv1":
        blocks = "-".join(map(str, sorted(validation["block"].unique())))
        fold = f"block-{blocks}" + ("" if scheme == "cv0" else f"-cv-{fold}")
    kind = "perceiver-pretrained" if pretrained else "perceiver"
    out = _workdir(cache) / kind / f"fold-{fold}"
    covariates = cache.get("covariates")
    typed = dict(cache.get("typed") or {})
    chosen = {**(cache.get("params") or {}), **typed}
    if covariates is not None and scheme != "cv1" and "val_split" not in chosen:
        typed["val_split"] = "environments"
    finetune(
        Phenotypes(train, "training folds"),
        genotypes,
        out,
        cache.get("params"),
        typed,
        pretrained=pretrained,
        covariates=covariates,
    )
    predictor = load_predictor(out)
    rows = genotypes.index_of(validation["name"])
    values = predictor.predict(genotypes, rows).mean(-1)  # (k, E)
    return values[np.arange(len(rows)), validation["block"].to_numpy()]


def perceiver_method(train, validation, genotypes, cache) -> np.ndarray:
    """Evaluate method ``perceiver``: a model trained from scratch per fold."""
    return _fold_predictions(train, validation, genotypes, cache, None)


def perceiver_pretrained_method(train, validation, genotypes, cache) -> np.ndarray:
    """Evaluate method ``perceiver-pretrained``: one masked pretraining on every
    genotype (transductive: genotypes only, never phenotypes), finetuned per fold."""
    if "pretrained" not in cache:
        from .pretraining import pretrain

        directory = _workdir(cache) / "pretrained"
        pretrain(
            genotypes,
            directory,
            cache.get("params"),
            cache.get("typed"),
            also_known=(HeadConfig, FinetuneSettings),
        )
        cache["pretrained"] = directory
    return _fold_predictions(train, validation, genotypes, cache, cache["pretrained"])
