"""Finetuning step 1, resolve the settings: every refusal and every automatic
choice of a finetuning run, before and after its data are prepared.

:func:`resolve_settings` turns ``--params`` / command-line options into typed
configs (:class:`FinetunePlan`) and refuses what cannot work together;
:func:`complete_settings` makes the choices that depend on the prepared data (the
additive path's kernel, the marker inputs' sizes).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np

from ..baselines import kernel_columns
from ..data import EnvCovariates, Genotypes, MarkerInputs, Phenotypes
from ..io import InputError, InputWarning
from ..io.marker_files import require_read
from ..marker_graph import GraphSettings, marker_sizes
from ..nn.environment import EnvironmentConfig
from ..nn.heads import HeadConfig
from ..nn.perceiver import PerceiverConfig
from ..params import resolve
from ..pretraining import data_sizes, load_masked_model
from ..tasks.phenotype import OBJECTIVES, class_count, n_outputs
from ..train import TrainConfig

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
    # fixed effects, comma-separated columns of the phenotypes table: factors
    # (sex, litter, replicate) and linear covariates (age), fitted by GLS in the
    # per-block REML GBLUP of the training records (never the cv fold's); the
    # network trains on the responses corrected for them, and the saved model keeps
    # them (config.json "fixed_effects") to add each record's fixed part
    fixed: str = ""
    fixed_numeric: str = ""
    # with the panel option (head key "panel"): steps of the masked copy task
    # fitting the panel attention on the training individuals (0: unfitted, its
    # initial temperatures)
    panel_fit_steps: int = 80

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
        if self.panel_fit_steps < 0:
            raise ValueError("panel_fit_steps must be >= 0")


# finetuning defaults differ from pretraining: fewer individuals, more regularisation
FINETUNE_DEFAULTS = {
    "epochs": 60,
    "patience": 6,
    "batch_size": 32,
    "lr": 3e-4,
    "weight_decay": 0.05,
    "warmup_steps": 20,
}


# the auto additive path is gaussian while the kept genotypes (individuals x
# polymorphic allele columns) take at most this many floats (200 MB)
AUTO_GAUSSIAN_FLOATS = 50_000_000


# model keys that change no weight: free to differ from the pretrained encoder's
RUNTIME_MODEL_KEYS = {"chunk_size", "checkpoint_attention", "dropout"}


def _check_architecture(given: dict, pretrained_model: dict, directory, source) -> None:
    """Refuse a model key in ``given`` (typed options when ``source`` is None, else
    the ``--params`` keys) that would change the pretrained encoder's shape: its
    weights would not fit, or would be dropped without a word."""
    for key, value in given.items():
        if key in RUNTIME_MODEL_KEYS or key not in pretrained_model:
            continue
        if value != pretrained_model[key]:
            raise InputError(
                f"option for {key!r}" if source is None else source,
                None if source is None else key,
                f"{value!r} differs from the pretrained encoder in {directory} "
                f"({pretrained_model[key]!r})",
                f"drop the {'option' if source is None else 'key'} to use the "
                "pretrained value, or pretrain again",
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
            stacklevel=4,
        )


@dataclass
class FinetunePlan:
    """The typed settings of one finetuning run, and what comes with them."""

    model: PerceiverConfig
    head: HeadConfig
    train: TrainConfig
    settings: FinetuneSettings
    graph: GraphSettings
    environment: EnvironmentConfig | None  # with covariates only
    n_environments: int  # environments: phenotype blocks, and covariate blocks beyond
    pretrained: object | None  # the pretrain output directory, if any
    # the pretrained encoder's weights (embed.*, encoder.*), if any
    pretrained_state: dict | None
    prior: np.ndarray | None  # (M,) marker weights for the additive path
    marker_inputs: MarkerInputs | None  # read by the caller from their files


def _pretrained_params(params: dict, typed: dict, pretrained, genotypes):
    """The pretrained encoder's weights and ``params`` completed with its model
    keys. A ``params`` key or typed option that would change its shape is
    refused; runtime keys (:data:`RUNTIME_MODEL_KEYS`) given are honoured."""
    masked, pre_config = load_masked_model(pretrained, genotypes)
    state = {
        k: v
        for k, v in masked.state_dict().items()
        # a panel-pretrained encoder read its tokens plus the projection of
        # panel copies: the projection comes along (finetune with panel: true)
        if k.startswith(("embed.", "encoder.", "panel_embed."))
    }
    _check_architecture(typed, pre_config["model"], pretrained, None)
    _check_architecture(params, pre_config["model"], pretrained, "--params")
    return state, {**pre_config["model"], **params}


def _head_sizes(phenotypes, objective: str, n_environments: int) -> dict:
    n_classes = class_count(phenotypes.table, objective, phenotypes.source)
    return {
        "n_environments": n_environments,
        "n_outputs": n_outputs(objective, n_classes),
        "n_classes": n_classes if objective == "ordinal" else 0,
    }


def resolve_settings(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    params: dict | None,
    typed: dict | None,
    pretrained=None,
    covariates: EnvCovariates | None = None,
    marker_inputs: MarkerInputs | None = None,
) -> FinetunePlan:
    """Typed configs from ``params`` (a ``--params`` JSON) and ``typed``
    (command-line options), sizes from the data; raises :class:`InputError` for
    settings that cannot work together, or for a marker file they name that is
    not in ``marker_inputs`` (read by the caller)."""
    params, typed = dict(params or {}), dict(typed or {})
    state = None
    if pretrained is not None:
        state, params = _pretrained_params(params, typed, pretrained, genotypes)
    objective = {**params, **typed}.get("objective", FinetuneSettings.objective)
    if covariates is not None and objective == "ordinal":
        raise InputError(
            "--objective",
            None,
            "the ordinal objective is not available with covariates",
            "use mse, huber, binary, multiclass or ranking",
        )
    n_environments = phenotypes.n_environments
    if covariates is not None:
        n_environments = max(n_environments, int(covariates.environments.max()) + 1)
    classes = (PerceiverConfig, HeadConfig, TrainConfig, FinetuneSettings)
    classes += (GraphSettings,)
    env_sizes = {}
    if covariates is not None:
        classes += (EnvironmentConfig,)
        env_sizes = {
            "n_times": covariates.values.shape[1],
            "n_covariates": len(covariates.names),
        }
    sizes = {
        **data_sizes(genotypes),
        **_head_sizes(phenotypes, objective, n_environments),
    }
    model_cfg, head_cfg, train_cfg, settings, graph_cfg, *env_cfg = resolve(
        classes,
        FINETUNE_DEFAULTS,
        params,
        {**typed, **sizes, **env_sizes},
        also_known=(EnvironmentConfig,),
    )
    if settings.objective not in ("mse", "huber") or covariates is not None:
        # GBLUP is a regression fitted per seen block; environments can be new
        head_cfg = replace(head_cfg, additive=False)
    _refuse_combinations(head_cfg, settings, covariates)
    if state is not None and "panel_embed.weight" in state and not head_cfg.panel:
        raise InputError(
            pretrained,
            None,
            "was pretrained with panel copies (panel: true)",
            "finetune it with panel: true, or pretrain without panel",
        )
    prior = None
    if settings.marker_weights:
        weights = None if marker_inputs is None else marker_inputs.weights
        prior = require_read(weights, "marker_weights", settings.marker_weights)
    return FinetunePlan(
        model_cfg,
        head_cfg,
        train_cfg,
        settings,
        graph_cfg,
        env_cfg[0] if env_cfg else None,
        n_environments,
        pretrained,
        state,
        prior,
        marker_inputs,
    )


def _refuse_combinations(head_cfg, settings, covariates) -> None:
    """The settings that cannot work together, one :class:`InputError` each."""
    gaussian = head_cfg.additive and head_cfg.additive_kernel == "gaussian"
    if gaussian and settings.separate_blocks:
        raise InputError(
            "--params",
            "key 'additive_kernel'",
            "the gaussian additive path needs one joint model",
            "set separate_blocks false or additive_kernel linear",
        )
    if settings.marker_weights and not head_cfg.additive:
        raise InputError(
            "--params",
            "key 'marker_weights'",
            "marker weights act on the additive GBLUP/RKHS path, which is off "
            "here (additive false, an objective other than mse/huber, or "
            "covariates)",
            "remove marker_weights or use the additive path",
        )
    if head_cfg.panel and covariates is not None:
        raise InputError(
            "--params",
            "key 'panel'",
            "panel copies are not available with environment covariates",
            "drop panel, or finetune without --covariates",
        )
    if settings.val_split == "environments" and covariates is None:
        raise InputError(
            "--params",
            "key 'val_split'",
            "holding out environments needs environment covariates",
            "pass --covariates or use val_split individuals",
        )


def complete_settings(plan: FinetunePlan, genotypes: Genotypes, data) -> FinetunePlan:
    """The choices that depend on the prepared ``data``
    (:class:`~gperceiver.finetuning.inputs.FinetuneData`): the additive path's
    kernel (auto: gaussian unless separate blocks, or the kept genotypes exceed
    :data:`AUTO_GAUSSIAN_FLOATS`), the sizes of the marker inputs and of the
    panel."""
    head_cfg, model_cfg = plan.head, plan.model
    if head_cfg.additive and head_cfg.additive_kernel in (None, "gaussian"):
        # the kernel keeps the genotypes of every training and validation record
        kept = data.train.join(data.val).rows
        frequencies = genotypes.allele_frequencies(kept)
        keep, _ = kernel_columns(frequencies, genotypes.ploidy)
        auto = head_cfg.additive_kernel is None
        too_big = len(kept) * int(keep.sum()) > AUTO_GAUSSIAN_FLOATS
        if auto and (plan.settings.separate_blocks or too_big):
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
    if head_cfg.panel:
        head_cfg = replace(head_cfg, panel_rows=len(data.panel.panel.ids))
    if plan.pretrained is None:  # a pretrained encoder brings its own
        model_cfg = replace(model_cfg, **marker_sizes(data.graph, data.annotations))
    else:
        _warn_unused_marker_inputs(plan.graph, model_cfg, plan.pretrained)
    return replace(plan, head=head_cfg, model=model_cfg)
