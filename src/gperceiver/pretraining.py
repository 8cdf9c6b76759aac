"""Pretraining (masked, twinned or both) and imputation jobs: data objects in, model
directory out.

Pretraining uses genotypes only (no phenotypes), so it may see every individual,
test lines included; the held-out individuals only steer early stopping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import check_markers, load_model_config, load_weights, save_model
from .data import MISSING, Genotypes, MarkerInputs, genotype_batches
from .device import as_device, autocast, model_device
from .io import InputError
from .marker_graph import GraphSettings, attach, graph_and_annotations, marker_sizes
from .nn.embeddings import count_targets
from .nn.perceiver import MaskedMarkerModel, PerceiverConfig
from .nn.twinned import TwinnedModel
from .params import resolve
from .tasks.masked import (
    MaskedConfig,
    MaskedMarkerTask,
    complete_genotypes,
    genotype_log_probs,
)
from .tasks.masked_panel import (
    PanelMaskedMarkerTask,
    PretrainPanel,
    add_training_panel,
)
from .tasks.twinned import PRETRAIN_TASKS, TwinnedConfig, TwinnedTask
from .train import TrainConfig, Trainer


def split_individuals(
    n: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random training / held-out indices (at least one of each when n >= 2)."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = (
        min(max(1, round(val_fraction * n)), n - 1) if val_fraction > 0 and n > 1 else 0
    )
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def data_sizes(genotypes: Genotypes) -> dict:
    return {
        "n_alleles": genotypes.n_alleles,
        "ploidy": genotypes.ploidy,
        "n_markers": genotypes.n_markers,
        "n_chroms": len(genotypes.markers.chrom_names),
    }


def model_class(task: str) -> type[MaskedMarkerModel]:
    """The model a pretraining task trains: masked only, or with the pair decoder."""
    return MaskedMarkerModel if task == "masked" else TwinnedModel


def build_model(
    config: PerceiverConfig, genotypes: Genotypes, task: str = "masked"
) -> MaskedMarkerModel:
    markers = genotypes.markers
    return model_class(task)(config, markers.relative_pos(), markers.chrom)


@dataclass
class PretrainSettings:
    val_fraction: float = (
        0.1  # individuals held out for the validation loss / early stopping
    )
    # "masked"; "contrastive": shared copies of random pairs at loci hidden in both
    # (tasks/twinned.py); "both": their sum, the masked loss times masked_weight
    task: str = "masked"

    def __post_init__(self):
        if self.task not in PRETRAIN_TASKS:
            raise ValueError(f"task must be one of {PRETRAIN_TASKS}, got {self.task!r}")


def _task(name, genotypes, frequencies, masked_cfg, twinned_cfg, panel=None):
    """The pretraining task called ``name`` ("masked", "contrastive", "both");
    with ``panel`` (:class:`PretrainPanel`) on, the masked task whose tokens read
    panel copies."""
    if panel is not None and panel.panel:
        return PanelMaskedMarkerTask(genotypes, frequencies, masked_cfg)
    if name == "masked":
        return MaskedMarkerTask(genotypes, frequencies, masked_cfg)
    weight = twinned_cfg.masked_weight if name == "both" else 0.0
    return TwinnedTask(genotypes, frequencies, masked_cfg, weight)


def pretrain_encoder(
    genotypes: Genotypes,
    out,
    params: dict | None = None,
    typed: dict | None = None,
    resume: bool = True,
    also_known: tuple = (),
    marker_inputs: MarkerInputs | None = None,
    device=None,
) -> MaskedMarkerModel:
    """Train a :class:`MaskedMarkerModel` (task "masked") or a
    :class:`TwinnedModel` ("contrastive", "both") and save it to ``out``.

    ``params`` (e.g. a ``--params`` JSON) and ``typed`` (command-line options) are
    flat dictionaries of :class:`PerceiverConfig`, :class:`TrainConfig`,
    :class:`MaskedConfig`, :class:`TwinnedConfig`, :class:`PretrainSettings`
    and :class:`~gperceiver.marker_graph.GraphSettings` fields. An LD graph is computed
    from the training individuals (not the held-out ones); an edge-list graph and
    annotations come from ``marker_inputs`` (read by the caller). The model is
    built on the CPU and trained on ``device`` (default the CPU; see
    :mod:`gperceiver.device`), where it is returned.
    """
    classes = (
        PerceiverConfig,
        TrainConfig,
        MaskedConfig,
        TwinnedConfig,
        PretrainSettings,
        GraphSettings,
        PretrainPanel,
    )
    resolved = resolve(
        classes,
        {},
        params or {},
        {**(typed or {}), **data_sizes(genotypes)},
        also_known=also_known,
    )
    model_cfg, train_cfg, masked_cfg, twinned_cfg, settings, graph_cfg, panel = resolved
    train_rows, val_rows = split_individuals(
        genotypes.n_individuals, settings.val_fraction, train_cfg.seed
    )
    graph, annotations = graph_and_annotations(
        graph_cfg, genotypes, train_rows, marker_inputs
    )
    model_cfg = replace(model_cfg, **marker_sizes(graph, annotations))
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg, genotypes, settings.task)
    attach(model.embed, graph, annotations)
    frequencies = genotypes.allele_frequencies(train_rows)
    if settings.task != "masked" and (len(train_rows) < 2 or len(val_rows) == 1):
        raise InputError(
            "genotypes",
            None,
            f"task {settings.task!r} pairs individuals, but the split has "
            f"{len(train_rows)} training and {len(val_rows)} held-out one(s)",
            "give at least 3 individuals or set --val-fraction 0",
        )
    _add_panel(model, genotypes, train_rows, settings, panel, train_cfg.seed)
    task = _task(settings.task, genotypes, frequencies, masked_cfg, twinned_cfg, panel)
    identity = {
        # the initial weights cover the model settings, seed, graph and annotations
        "model": model.state_dict(),
        "task settings": [asdict(c) for c in (masked_cfg, twinned_cfg, settings)],
        "genotypes": genotypes.fingerprint(),
        "training rows": [train_rows, val_rows],
    } | _panel_record(model, panel)
    model.to(as_device(device))  # after the identity: the same run on any device
    result = Trainer(model, task, train_cfg, out, resume, identity).fit(
        train_rows, val_rows
    )
    config = _saved_config(
        settings, model_cfg, train_cfg, masked_cfg, twinned_cfg, graph_cfg,
        result, len(train_rows), len(val_rows),
    )  # fmt: skip
    save_model(out, model, config | _panel_record(model, panel), genotypes.markers)
    return model


def _add_panel(model, genotypes, train_rows, settings, panel, seed) -> None:
    """With the ``panel`` option (:class:`PretrainPanel`) on, give ``model`` the
    panel of the training individuals ``train_rows`` (never the held-out ones)
    and its fitted attention; refuse it where it cannot work, in one line."""
    if not panel.panel:
        return
    if settings.task != "masked":
        raise InputError(
            "--params",
            "key 'panel'",
            f"panel copies are read by the masked task only, not {settings.task!r}",
            "use task masked, or drop panel",
        )
    if len(train_rows) < 2:
        raise InputError(
            "--params",
            "key 'panel'",
            "the panel needs at least 2 training individuals",
            "give more individuals, or drop panel",
        )
    add_training_panel(model, genotypes, train_rows, panel, seed)


def _panel_record(model, panel) -> dict:
    """The ``panel`` entry of the identity and ``config.json`` (none when off:
    runs and saved models without the option read as before)."""
    if not panel.panel:
        return {}
    return {"panel": asdict(panel) | {"panel_rows": len(model.panel.ids)}}


def _saved_config(
    settings, model_cfg, train_cfg, masked_cfg, twinned_cfg, graph_cfg, result,
    n_train: int, n_val: int,
) -> dict:  # fmt: skip
    """The ``config.json`` of a pretrained model: its settings and result."""
    return {
        "task": settings.task,
        "model": model_cfg.to_dict(),
        "train": asdict(train_cfg),
        "masked": asdict(masked_cfg),
        "contrastive": asdict(twinned_cfg),  # key kept: saved models read it
        "pretrain": asdict(settings),
        "graph": asdict(graph_cfg),
        "result": {
            "best_step": result.best_step,
            "best_val_loss": result.best_loss,
            "stopped_early": result.stopped_early,
            "n_train": n_train,
            "n_val": n_val,
        },
    }


def load_masked_model(
    directory, genotypes: Genotypes | None = None, data_path=None, device=None
):
    """Load a pretrained model (a :class:`TwinnedModel` when its task was
    contrastive or both) onto ``device`` (default the CPU); with ``genotypes``,
    check their marker map matches."""
    config, markers = load_model_config(directory)
    if genotypes is not None:
        check_markers(markers, genotypes.markers, directory, data_path or "genotypes")
    model_cfg = PerceiverConfig.from_dict(config["model"])
    model = model_class(config.get("task", "masked"))(
        model_cfg, markers.relative_pos(), markers.chrom
    )
    if config.get("panel", {}).get("panel"):  # pretrained with panel copies
        saved = dict(config["panel"])
        rows = saved.pop("panel_rows")
        model.add_panel(PretrainPanel(**saved).attention_config(), rows)
    return load_weights(directory, model).to(as_device(device)).eval(), config


@dataclass
class Imputation:
    """Filled genotypes and, for each imputed locus, the genotype probabilities."""

    genotypes: Genotypes
    rows: np.ndarray  # (K,) individual index of each imputed locus
    loci: np.ndarray  # (K,) marker index
    probabilities: np.ndarray  # (K, G) over the complete genotypes, see ``complete``
    complete: np.ndarray  # (G, A) copy counts of each complete genotype


@torch.no_grad()
def impute(
    model: MaskedMarkerModel,
    genotypes: Genotypes,
    batch_size: int = 16,
    max_targets: int = 4096,
    progress: bool = True,
    frequency_scaler: float = 0.0,
) -> Imputation:
    """Fill every locus with a missing copy by its most probable genotype.

    Loci with a missing copy are fed as masked and decoded; the chosen genotype is
    the most probable one that contains the copies that were observed.

    A model pretrained with ``frequency_scaler`` s > 0 saw target loci drawn with
    weight ``prod_copies (1 - p)^s``, so its decoder learned genotype probabilities
    tilted towards rare alleles; that weight is divided out here (with the allele
    frequencies of ``genotypes``), which turns them back into p(genotype | data).
    The model runs where it is (under autocast on CUDA); the choice of genotypes
    is made in float32 on the CPU.
    """
    device = model_device(model)
    a = genotypes.n_alleles
    complete = complete_genotypes(genotypes.ploidy, a)  # (G, A)
    log_rest = torch.from_numpy(
        np.log(np.clip(1.0 - genotypes.allele_frequencies(), 1e-6, None))
    ).float()  # (M, A)
    filled = genotypes.alleles.copy()
    out_rows, out_loci, out_probs = [], [], []
    marker_idx = torch.arange(genotypes.n_markers, device=device)
    with autocast(device):
        table = model.embed.position_table()  # fixed weights: once for every batch
    incomplete = (genotypes.alleles == MISSING).any(-1)  # (N, M)
    todo = np.flatnonzero(incomplete.any(1))
    batches = genotype_batches(genotypes, todo, batch_size)
    n_batches = -(-len(todo) // batch_size)
    for rows, alleles in tqdm(
        batches, total=n_batches, disable=not progress, unit="batch", leave=False
    ):
        hidden = torch.from_numpy(incomplete[rows])
        observed = count_targets(alleles, a)  # (B, M, A)
        masked = alleles.masked_fill(hidden[..., None], a + 1).to(device)
        copy = model.panel_copy(genotypes, rows)  # None without a saved panel
        with autocast(device):
            latents, tokens = model.encode(
                masked, marker_idx, return_tokens=True, table=table, copy=copy
            )
        for b, row in enumerate(rows):
            loci = torch.nonzero(hidden[b]).squeeze(1)
            for chunk in loci.split(max_targets):
                with autocast(device):
                    logits = model.decode(
                        latents[b : b + 1],
                        tokens[b : b + 1],
                        marker_idx,
                        chunk.to(device),
                        table,
                    )[0]
                logits = logits.float().cpu()
                log_p = genotype_log_probs(logits, complete)  # (T, G)
                if frequency_scaler:
                    prior = log_rest[chunk] @ complete.T.float()  # (T, G)
                    log_p = log_p - frequency_scaler * prior
                # genotypes must contain every observed copy
                fits = (complete[None] >= observed[b, chunk][:, None]).all(-1)  # (T, G)
                log_p = log_p.masked_fill(~fits, -torch.inf).log_softmax(-1)
                filled[row, chunk.numpy()] = _copies(complete[log_p.argmax(-1)])
                out_rows.append(np.full(len(chunk), row))
                out_loci.append(chunk.numpy())
                out_probs.append(log_p.exp().numpy())

    def cat(parts, dtype):
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    return Imputation(
        Genotypes(filled, genotypes.names, genotypes.markers, a),
        cat(out_rows, np.int64),
        cat(out_loci, np.int64),
        np.concatenate(out_probs) if out_probs else np.zeros((0, len(complete))),
        complete.numpy(),
    )


def _copies(counts: torch.Tensor) -> np.ndarray:
    """(T, A) copy counts of alleles 1..A -> (T, P) allele ids, ascending."""
    n, a = counts.shape
    ids = torch.arange(1, a + 1).expand(n, -1).flatten()
    return torch.repeat_interleave(ids, counts.flatten()).view(n, -1).numpy()


# one-shot imputation (no model given) pretrains first and should end in bounded
# time: training stops after 30 minutes unless its epochs end sooner, with a short
# warm-up so that a budget of a few hundred steps is not spent ramping up. At
# 1,000 x 20,000 markers 15 minutes (~1.5 epochs) imputed worse than the
# per-marker mode (BENCHMARKS.md, Imputation).
ONE_SHOT_IMPUTE = {"time_budget_s": 1800.0, "warmup_steps": 20}


def one_shot_params(params: dict | None, typed: dict | None) -> dict:
    """The ``params`` of a one-shot imputation's pretraining (:data:`ONE_SHOT_IMPUTE`
    under ``params``; ``typed`` options still win); refuses the contrastive task,
    whose allele decoder stays untrained, before anything is trained."""
    params = {**ONE_SHOT_IMPUTE, **(params or {})}
    if {**params, **(typed or {})}.get("task") == "contrastive":
        raise InputError(
            "--task",
            None,
            "contrastive pretraining leaves the allele decoder untrained",
            "impute with --task masked or both",
        )
    return params


def impute_genotypes(
    genotypes: Genotypes,
    model_dir,
    pretrain_params: dict | None = None,
    typed: dict | None = None,
    progress: bool = True,
    data_path=None,
    marker_inputs: MarkerInputs | None = None,
    device=None,
) -> Imputation:
    """Impute ``genotypes`` with the masked model in ``model_dir``; with
    ``pretrain_params`` (from :func:`one_shot_params`) pretrain it there first, on
    these genotypes. A model pretrained without a trained allele decoder
    (contrastive) is refused; the model's frequency weighting is divided out.
    Pretraining and imputation run on ``device`` (default the CPU)."""
    if pretrain_params is not None:
        pretrain_encoder(
            genotypes,
            model_dir,
            pretrain_params,
            typed,
            marker_inputs=marker_inputs,
            device=device,
        )
    model, config = load_masked_model(model_dir, genotypes, data_path, device)
    if config.get("task") == "contrastive":
        raise InputError(
            model_dir,
            None,
            "was pretrained with --task contrastive, which leaves the allele "
            "decoder untrained",
            "impute with a model pretrained with --task masked or both",
        )
    return impute(
        model,
        genotypes,
        progress=progress,
        frequency_scaler=config["masked"]["frequency_scaler"],
    )
