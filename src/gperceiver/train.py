"""One training loop for every task: AdamW, warm-up + cosine/cyclic LR, clipping,
early stopping on a validation set, checkpoints and exact resume (over 500 lines
on purpose: the loop and the checkpoint state it must restore exactly live
together).

Determinism: the batch order of epoch ``e`` comes from ``(seed, e)`` and every step's
randomness (target sampling, dropout) from ``(seed, step)``, so a run killed and
resumed from its last checkpoint ends with the same weights as one never stopped.

Under ``torchrun`` (see :mod:`gperceiver.distributed`) every rank draws the same
global batch and takes every N-th row of it; DistributedDataParallel averages the
gradients, logged losses are averaged over ranks, each rank validates on the whole
validation set (so all take the same early-stopping decision), and rank 0 alone
writes metrics and checkpoints.

Devices: the loop trains the model where it is (see :mod:`gperceiver.device`):
forward passes under that device's autocast (bfloat16 on CUDA), DDP on its GPU.
Checkpoints hold CPU copies and are read back onto the model's device, and no
device enters the checkpoint's identity: a run resumed on another device is the
same run (its remaining steps then round as that device does).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import (
    digest,
    load_tensors,
    optimizer_tensors,
    read_json,
    restore_optimizer,
    save_tensors,
    write_json,
)
from .device import autocast, model_device
from .distributed import all_mean, broadcast, rank_and_world
from .io import InputError, atomic_path

RANK_SEED_STRIDE = 7_919_993  # step seeds of rank r are offset by r * this


@dataclass
class TrainConfig:
    lr: float = 1e-3  # peak LR; AdamW at this width is stable up to ~3e-3
    warmup_steps: int = (
        50  # linear ramp from 0: avoids early large updates of fresh layers
    )
    schedule: str = (
        "cosine"  # "cosine" to min_lr_ratio*lr, "cyclic" (cosine restarts), "constant"
    )
    cycle_steps: int = 500  # period of the cyclic schedule
    min_lr_ratio: float = 0.05  # LR floor relative to lr
    weight_decay: float = (
        0.01  # applied to matrices only, not to norms, biases, embeddings
    )
    grad_clip: float = 1.0  # global gradient-norm clip
    batch_size: int = 16  # genotypes per step
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    max_steps: int | None = None  # hard cap on optimiser steps (overrides epochs)
    patience: int = 5  # evaluations without validation improvement before stopping
    min_delta: float = 1e-4  # improvement smaller than this does not reset patience
    eval_every: int | None = None  # steps between validations; None = once per epoch
    checkpoint_every: int | None = (
        None  # steps between checkpoints; None = at each evaluation
    )
    seed: int = 0
    progress: bool = True
    # wall-clock budget in seconds (None or 0: no budget). Training stops at the first
    # step past it (validated and checkpointed, best weights kept) and the cosine LR
    # follows the larger of the step and clock shares, so it anneals in time; time
    # spent before a resume counts. Results then depend on the machine's speed.
    time_budget_s: float | None = None

    def __post_init__(self):
        positive = ["lr", "cycle_steps", "grad_clip", "batch_size", "epochs"]
        positive += ["patience", "max_steps", "eval_every", "checkpoint_every"]
        at_least_zero = ["warmup_steps", "weight_decay", "min_delta", "time_budget_s"]
        failed = [
            f"{name} must be positive, got {getattr(self, name)}"
            for name in positive
            if getattr(self, name) is not None and not getattr(self, name) > 0
        ] + [
            f"{name} must be >= 0, got {getattr(self, name)}"
            for name in at_least_zero
            if getattr(self, name) is not None and not getattr(self, name) >= 0
        ]
        if not 0 <= self.min_lr_ratio <= 1:
            failed.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if failed:
            raise ValueError("; ".join(failed))

    def fingerprint(self) -> str:
        keys = {k: v for k, v in asdict(self).items() if k not in ("progress",)}
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[
            :12
        ]


class Task(Protocol):
    """What the loop needs from an objective."""

    def loss(
        self, model, rows: np.ndarray, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict]:
        """Loss and metrics of a training batch of individuals ``rows``."""

    def evaluate(self, model, rows: np.ndarray, train_rows: np.ndarray) -> dict:
        """Metrics (with ``loss``) on held-out ``rows``, deterministic, no grad;
        ``train_rows`` may calibrate statistics (never fit weights)."""

    # optional: ``epoch_order(rows, rng)``, the visiting order of an epoch (default
    # ``rng.permutation(rows)``); streamed data keep rows of one read together


def lr_at(step: int, total: int, config: TrainConfig, spent: float = 0.0) -> float:
    """Learning rate at optimiser step ``step`` (0-based); ``spent`` is the share
    of the time budget used (0 without one)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    floor = config.lr * config.min_lr_ratio
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cyclic":
        phase = ((step - config.warmup_steps) % config.cycle_steps) / config.cycle_steps
    elif config.schedule == "cosine":
        by_steps = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        phase = min(1.0, max(by_steps, spent))
    else:
        raise ValueError(
            f"unknown LR schedule {config.schedule!r}: use cosine, cyclic or constant"
        )
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * phase))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only, torch's fused kernel (one
    pass per tensor: at 10k markers 3.6 ms a step against 13.8 ms for its
    multi-tensor loop, at 100k 6 ms against 56 ms; BENCHMARKS.md, *Scale*)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2 and not _is_embedding(model, p)]
    ids = {id(p) for p in decay}
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), fused=True)


def _is_embedding(model: torch.nn.Module, param) -> bool:
    return any(
        isinstance(m, torch.nn.Embedding) and m.weight is param for m in model.modules()
    )


def _seed_default_generators(seed: int) -> None:
    """Seed torch's default generators (dropout): the CPU one, and CUDA's once it
    is in use. Same state as ``torch.manual_seed``, without its queued lazy CUDA
    seeding, whose call-stack capture cost ~4 ms a step."""
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


class TaskLoss(torch.nn.Module):
    """A task's training loss as a module: DistributedDataParallel then sees the
    forward pass that uses the parameters (the task may call any model method)."""

    def __init__(self, model: torch.nn.Module, task: Task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, rows: np.ndarray, generator: torch.Generator, share=None):
        if share is None:
            return self.task.loss(self.model, rows, generator)
        return self.task.loss(self.model, rows, generator, share=share)


def _on_cpu(value):
    """``value`` (nested tuples, lists, dicts) with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(v) for v in value)
    return value


@dataclass
class TrainResult:
    history: list[dict]
    best_step: int
    best_loss: float
    stopped_early: bool


class Trainer:
    """Runs ``task`` on ``model`` and keeps checkpoints in ``directory/checkpoints``.

    ``identity`` names everything else that shapes the run besides ``config``
    (model and task settings, the marker map, the data, the training rows and
    their responses), e.g. ``{"model settings": {...}, "data": fingerprint}``.
    Each part is hashed into the checkpoint; a resume whose parts differ is
    refused with the names of the parts that changed (``resume=False`` starts
    afresh), so a checkpoint never continues a run of other settings or data.
    """

    def __init__(
        self,
        model,
        task: Task,
        config: TrainConfig,
        directory,
        resume: bool = True,
        identity: dict | None = None,
    ):
        self.model, self.task, self.config = model, task, config
        self.directory = Path(directory)
        self.checkpoints = self.directory / "checkpoints"
        self.resume = resume
        self.identity = {"training settings": config.fingerprint()} | {
            name: digest(part) for name, part in (identity or {}).items()
        }

    # -- checkpoints -------------------------------------------------------------------
    def _save_checkpoint(self, optimizer, state: dict, best_weights: dict) -> None:
        name = f"step-{state['step']:08d}"
        target = self.checkpoints / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        save_tensors(self.model.state_dict(), target / "model.safetensors")
        save_tensors(best_weights, target / "best.safetensors")
        tensors, scalars = optimizer_tensors(optimizer)
        save_tensors(tensors, target / "optimizer.safetensors")
        write_json({**state, "optimizer": scalars}, target / "state.json")
        # the pointer file flips atomically: a kill leaves the previous checkpoint valid
        write_json(
            {"latest": name, "identity": self.identity},
            self.checkpoints / "latest.json",
        )
        for old in self.checkpoints.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, optimizer) -> tuple[dict, dict] | None:
        pointer = self.checkpoints / "latest.json"
        if not (self.resume and pointer.exists()):
            return None
        latest = read_json(pointer)
        stored = latest.get("identity", {"training settings": latest.get("config")})
        changed = [
            name
            for name in dict.fromkeys([*self.identity, *stored])
            if stored.get(name) != self.identity.get(name)
        ]
        if changed:
            raise InputError(
                self.checkpoints,
                None,
                f"holds a run with other {', '.join(changed)}",
                "rerun with --restart to start afresh, or use another --out",
            )
        source = self.checkpoints / latest["latest"]
        state = read_json(source / "state.json")
        self.model.load_state_dict(load_tensors(source / "model.safetensors"))
        restore_optimizer(
            optimizer,
            load_tensors(source / "optimizer.safetensors"),
            state.pop("optimizer"),
        )
        return state, load_tensors(source / "best.safetensors")

    def _write_metrics(self, history: list[dict]) -> None:
        # a fixed column order: a resumed run (rows read back from JSON) writes the
        # same file as one never stopped
        names = {k for row in history for k in row}
        lead = [k for k in ("step", "epoch", "lr") if k in names]
        keys = (
            lead
            + sorted(names - {*lead, "seconds"})
            + ["seconds"] * ("seconds" in names)
        )
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(history)
        with atomic_path(self.directory / "metrics.csv") as tmp:
            tmp.write_text(buffer.getvalue())

    # -- the loop ----------------------------------------------------------------------
    def _validate(self, val_rows: np.ndarray, train_rows: np.ndarray) -> dict:
        self.model.eval()
        with torch.no_grad(), autocast(model_device(self.model)):
            metrics = self.task.evaluate(self.model, val_rows, train_rows=train_rows)
        return {f"val_{k}": v for k, v in metrics.items()}

    def fit(self, train_rows: np.ndarray, val_rows: np.ndarray | None) -> TrainResult:
        """Train on ``train_rows`` (early stopping on ``val_rows`` when given) and
        return the history; the model ends holding its best weights."""
        config, model = self.config, self.model
        plan = _Schedule.of(config, len(train_rows))
        rank, world = rank_and_world()
        if world > plan.batch:
            raise ValueError(f"batch_size {plan.batch} is below the {world} processes")
        optimizer = make_optimizer(model, config)
        state, best_weights, resumed = self._restore(optimizer)
        distributed = None
        if world > 1:  # DDP's own copy of the weights follows rank 0's
            device = model_device(model)
            distributed = torch.nn.parallel.DistributedDataParallel(
                TaskLoss(model, self.task),
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        history = state["history"]
        validating = val_rows is not None and len(val_rows) > 0
        if not resumed and validating:
            # the starting point competes too: a model that only gets worse on the
            # validation set is returned unchanged (e.g. a head initialised at GBLUP)
            initial = self._validate(val_rows, train_rows)
            history.append({"step": 0, "epoch": 0.0, **initial, "seconds": 0.0})
            state["best_loss"] = initial["val_loss"]

        bar = tqdm(
            total=plan.total,
            initial=state["step"],
            disable=not config.progress or rank > 0,
            unit="step",
            leave=False,
        )
        clock = _Clock(state.get("seconds", 0.0), config.time_budget_s or None)
        # losses since the last evaluation: checkpointed, so a resume logs the same
        state.setdefault("running", [])
        stopped_early = False
        while (
            state["step"] < plan.total
            and state["bad_evals"] < config.patience
            and not clock.out_of_time
        ):
            state["running"].append(
                self._step(optimizer, distributed, train_rows, plan, state, clock)
            )
            state["step"] = step = state["step"] + 1
            bar.update(1)
            bar.set_postfix(loss=f"{state['running'][-1]['loss']:.4f}")
            state["seconds"] = clock.elapsed
            last = step == plan.total or clock.out_of_time
            if step % plan.eval_every == 0 or last:
                improved = self._record(
                    optimizer, history, state, plan, clock, val_rows, train_rows
                )
                if improved:
                    best_weights = {
                        k: v.detach().clone() for k, v in model.state_dict().items()
                    }
                if state["bad_evals"] >= config.patience:
                    stopped_early = True
                    if rank == 0:
                        self._save_checkpoint(optimizer, state, best_weights)
                    break
            if rank == 0 and (step % plan.checkpoint_every == 0 or last):
                self._save_checkpoint(optimizer, state, best_weights)
        bar.close()
        stopped_early = stopped_early or state["bad_evals"] >= config.patience
        model.load_state_dict(best_weights)
        return TrainResult(
            history, state["best_step"], state["best_loss"], stopped_early
        )

    def _restore(self, optimizer) -> tuple[dict, dict, bool]:
        """The loop state, best weights and whether they come from a checkpoint;
        under torchrun every rank takes rank 0's (a refusal stops every rank)."""
        state = {
            "step": 0,
            "best_loss": math.inf,
            "best_step": 0,
            "bad_evals": 0,
            "history": [],
            "seconds": 0.0,  # training time so far, resumes included
        }
        best_weights = {
            k: v.detach().clone() for k, v in self.model.state_dict().items()
        }
        rank, world = rank_and_world()
        restored, refusal = None, None
        if rank == 0:  # the one writer reads the checkpoint...
            try:
                restored = self._load_checkpoint(optimizer)
            except InputError as err:
                refusal = (err.path, err.where, err.problem, err.fix)
        if world > 1:  # ...a refused resume stops every rank, not rank 0 alone
            refusal = broadcast(refusal)
        if refusal is not None:
            raise InputError(*refusal)
        if restored is not None:
            state, best_weights = restored
        resumed = restored is not None
        if world > 1:
            state, best_weights, optimizer_state, resumed = broadcast(
                _on_cpu((state, best_weights, optimizer.state_dict(), resumed))
            )
            optimizer.load_state_dict(optimizer_state)  # onto the model's device
        return state, best_weights, resumed

    def _step(self, optimizer, distributed, train_rows, plan, state, clock) -> dict:
        """One optimiser step at ``state["step"]``; its losses, rank-averaged."""
        config, model = self.config, self.model
        rank, world = rank_and_world()
        shared = world > 1 and getattr(self.task, "shares_batches", False)
        step = state["step"]
        epoch, offset = divmod(step, plan.steps_per_epoch)
        rng = np.random.default_rng([config.seed, epoch])
        shuffle = getattr(self.task, "epoch_order", None)
        order = shuffle(train_rows, rng) if shuffle else rng.permutation(train_rows)
        rows = order[offset * plan.batch : (offset + 1) * plan.batch]
        # a task that draws the global batch's randomness once gets the same
        # seed on every rank and computes its share; others draw per rank
        rank_offset = 0 if shared else rank * RANK_SEED_STRIDE
        seed = config.seed * 1_000_003 + step + rank_offset
        generator = torch.Generator().manual_seed(seed)
        _seed_default_generators(seed)  # dropout

        spent = clock.elapsed / clock.budget if clock.budget else 0.0
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, plan.total, config, spent)
        if not model.training:  # the first step and after each validation
            model.train()
        with autocast(model_device(model)):
            if distributed is None:
                loss, metrics = self.task.loss(model, rows, generator)
            elif shared:
                loss, metrics = distributed(rows, generator, slice(rank, None, world))
            else:
                loss, metrics = distributed(rows[rank::world], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trained = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
        optimizer.step()
        # the clock is averaged too, so every rank stops at the same step
        *values, elapsed = all_mean([loss.item(), *metrics.values(), clock.now()])
        clock.elapsed = elapsed
        return {
            "loss": values[0],
            **dict(zip(metrics, values[1:], strict=True)),
            "grad_norm": grad_norm.item(),
        }

    def _record(self, optimizer, history, state, plan, clock, val_rows, train_rows):
        """Log the losses since the last evaluation (and validate); update the
        early-stopping state; return whether the monitored loss improved."""
        step, running = state["step"], state["running"]
        row = {
            "step": step,
            "epoch": round(step / plan.steps_per_epoch, 3),
            "lr": optimizer.param_groups[0]["lr"],
        }
        row.update(
            {f"train_{k}": float(np.mean([r[k] for r in running])) for k in running[0]}
        )
        state["running"] = []
        if val_rows is not None and len(val_rows) > 0:
            row.update(self._validate(val_rows, train_rows))
            monitored = row["val_loss"]
        else:
            monitored = row["train_loss"]
        row["seconds"] = round(clock.now(), 2)
        history.append(row)
        improved = monitored < state["best_loss"] - self.config.min_delta
        if improved:
            state.update(best_loss=monitored, best_step=step, bad_evals=0)
        else:
            state["bad_evals"] += 1
        if rank_and_world()[0] == 0:
            self._write_metrics(history)
        return improved


@dataclass(frozen=True)
class _Schedule:
    """Step counts of one run: batch size, steps per epoch, total steps and the
    evaluation and checkpoint periods (in steps)."""

    batch: int
    steps_per_epoch: int
    total: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def of(cls, config: TrainConfig, n_rows: int) -> _Schedule:
        batch = min(config.batch_size, n_rows)
        steps_per_epoch = max(1, n_rows // batch)
        total = config.max_steps or config.epochs * steps_per_epoch
        eval_every = config.eval_every or steps_per_epoch
        return cls(
            batch,
            steps_per_epoch,
            total,
            eval_every,
            config.checkpoint_every or eval_every,
        )


class _Clock:
    """Training seconds so far (resumes included) against an optional budget."""

    def __init__(self, base: float, budget: float | None):
        self.base, self.budget = base, budget
        self.started = time.perf_counter()
        self.elapsed = base  # as last agreed by all ranks

    def now(self) -> float:
        return self.base + time.perf_counter() - self.started

    @property
    def out_of_time(self) -> bool:
        return self.budget is not None and self.elapsed >= self.budget
