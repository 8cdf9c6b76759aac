"""Corpus, windows, the causal-LM task for the shared Trainer, pretraining,
bits-per-base evaluation and embeddings.

Bits per base: ``-log2 p(x_t | x_<t)`` averaged over positions whose token is A, C,
G or T (ambiguity codes and record separators are predicted but not scored).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..device import as_device, autocast, model_device
from ..io import InputError, atomic_path
from ..params import resolve
from ..train import TrainConfig, Trainer
from .fasta import Record, SequenceFile
from .model import SeqConfig, SeqLM
from .tokenizer import SEP, is_base, reverse_complement

LOG2 = math.log(2.0)


@dataclass
class SeqRunConfig:
    val_fraction: float = 0.01  # tail of every record kept out of training (validation)
    rc_prob: float = 0.5  # share of training windows read from the reverse strand
    val_windows: int = 48  # validation windows per evaluation (fixed, evenly spread)

    def __post_init__(self):
        if not 0 <= self.val_fraction < 0.5:
            raise ValueError("val_fraction must lie in [0, 0.5)")


# Trainer defaults for sequence pretraining (step-based: one "row" is one window)
SEQ_TRAIN_DEFAULTS = dict(
    lr=2e-3,
    warmup_steps=100,
    batch_size=8,  # windows per step: more updates per CPU minute
    epochs=1,
    eval_every=100,
    patience=1_000_000,  # cosine to the end; best validation weights are kept
    weight_decay=0.01,
)


@dataclass
class Stream:
    """Records joined into one token stream, each preceded by ``<sep>``."""

    tokens: np.ndarray  # (T,) uint8
    soft_mask: np.ndarray  # (T,) bool

    @classmethod
    def join(cls, parts: list[tuple[np.ndarray, np.ndarray]]) -> Stream:
        tokens = [np.concatenate([[SEP], t]).astype(np.uint8) for t, _ in parts]
        masks = [np.concatenate([[False], m]) for _, m in parts]
        if not tokens:
            return cls(np.zeros(0, np.uint8), np.zeros(0, bool))
        return cls(np.concatenate(tokens), np.concatenate(masks))


def split_records(records: list[Record], val_fraction: float) -> tuple[Stream, Stream]:
    """Training stream (heads of records) and validation stream (their tails)."""
    train, val = [], []
    for r in records:
        cut = len(r.tokens) - int(round(len(r.tokens) * val_fraction))
        train.append((r.tokens[:cut], r.soft_mask[:cut]))
        if cut < len(r.tokens):
            val.append((r.tokens[cut:], r.soft_mask[cut:]))
    return Stream.join(train), Stream.join(val)


def window_loss(model: SeqLM, tokens: torch.Tensor, mask: torch.Tensor):
    """Summed nats over scored (base) targets and their count; windows (B, S + 1)
    (moved to the model's device)."""
    device = model_device(model)
    tokens, mask = tokens.to(device), mask.to(device)
    logits = model(tokens[:, :-1], mask[:, :-1])
    targets = tokens[:, 1:].long()
    nats = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
    scored = (targets >= 2) & (targets <= 5)  # A, C, G, T
    return (nats * scored).sum(), scored.sum()


class LanguageModelTask:
    """Trainer task: row i is the training window starting near ``i * context``."""

    def __init__(self, train: Stream, val: Stream, model_config, data_config):
        self.train, self.val = train, val
        self.span = model_config.context + 1  # inputs + the next token
        self.data = data_config
        self.n_train = max(1, (len(train.tokens) - self.span) // model_config.context)
        starts = np.linspace(
            0, max(0, len(val.tokens) - self.span), data_config.val_windows
        )
        self.val_starts = np.unique(starts.astype(np.int64))

    def rows(self) -> tuple[np.ndarray, np.ndarray | None]:
        val = (
            np.arange(len(self.val_starts))
            if len(self.val.tokens) > self.span
            else None
        )
        return np.arange(self.n_train), val

    def _batch(
        self, stream: Stream, starts, flips
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = np.stack([stream.tokens[s : s + self.span] for s in starts])
        mask = np.stack([stream.soft_mask[s : s + self.span] for s in starts])
        if flips is not None and flips.any():
            tokens[flips], mask[flips] = reverse_complement(tokens[flips], mask[flips])
        return torch.from_numpy(tokens.copy()), torch.from_numpy(mask.copy())

    def loss(self, model, rows, generator):
        context = self.span - 1
        jitter = torch.randint(0, context, (len(rows),), generator=generator).numpy()
        last = len(self.train.tokens) - self.span
        starts = np.minimum(rows * context + jitter, last)
        flips = torch.rand(len(rows), generator=generator).numpy() < self.data.rc_prob
        tokens, mask = self._batch(self.train, starts, flips)
        nats, count = window_loss(model, tokens, mask)
        loss = nats / count.clamp_min(1)
        return loss, {"bits_per_base": loss.item() / LOG2}

    def evaluate(self, model, rows, train_rows):
        nats, count = 0.0, 0
        for part in np.array_split(rows, max(1, len(rows) // 16)):
            tokens, mask = self._batch(self.val, self.val_starts[part], None)
            n, c = window_loss(model, tokens, mask)
            nats, count = nats + n.item(), count + c.item()
        bits = nats / max(count, 1) / LOG2
        return {"loss": bits, "bits_per_base": bits}


def pretrain(
    files: list[SequenceFile], out, params: dict, resume: bool = True, device=None
) -> dict:
    """Train a sequence model on the records of FASTA ``files`` (read by the
    caller, :func:`~gperceiver.seq.fasta.read_sequence_files`) on ``device``
    (default the CPU); write it to ``out``.

    ``params``: flat JSON of :class:`SeqConfig`, :class:`SeqRunConfig` and
    :class:`~gperceiver.train.TrainConfig` fields. Returns the training summary.
    """
    model_config, data_config, train_config = resolve(
        (SeqConfig, SeqRunConfig, TrainConfig), SEQ_TRAIN_DEFAULTS, params, {}
    )
    records = [r for f in files for r in f.records]
    train, val = split_records(records, data_config.val_fraction)
    if len(train.tokens) <= model_config.context + 1:
        raise InputError(
            files[0].path,
            None,
            f"{len(train.tokens)} training positions do not fill one window of "
            f"context {model_config.context}",
            'pass more sequence or a smaller "context" in --params',
        )
    task = LanguageModelTask(train, val, model_config, data_config)
    torch.manual_seed(train_config.seed)
    model = SeqLM(model_config).to(as_device(device))  # initialised on the CPU
    started = time.perf_counter()
    train_rows, val_rows = task.rows()
    result = Trainer(model, task, train_config, out, resume=resume).fit(
        train_rows, val_rows
    )
    summary = {
        "files": [f.path for f in files],
        "records": len(records),
        "train_tokens": int(len(train.tokens)),
        "val_tokens": int(len(val.tokens)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result.history[-1]["step"] if result.history else 0,
        "best_step": result.best_step,
        "best_val_bits_per_base": result.best_loss,
        "seconds": round(time.perf_counter() - started, 1),
    }
    model.save_pretrained(
        out,
        extra={
            "data": asdict(data_config),
            "training": asdict(train_config),
            "summary": summary,
        },
    )
    return summary


def sliding_windows(length: int, context: int, overlap: int):
    """(start, first scored offset) of windows covering targets 1..length-1 once."""
    step = context - overlap
    start, first = 0, 0
    while True:
        yield start, first
        if start + context + 1 >= length:
            return
        start, first = start + step, overlap


def _score_windows(model: SeqLM, stream: Stream, windows) -> tuple[float, int]:
    """Summed nats and count of scored base targets of ``(start, first)`` windows."""
    context = model.config.context
    span = context + 1
    tokens = np.zeros((len(windows), span), np.uint8)  # <pad> after the end
    mask = np.zeros((len(windows), span), bool)
    keep = np.zeros((len(windows), context), bool)
    for i, (start, first) in enumerate(windows):
        piece = stream.tokens[start : start + span]
        tokens[i, : len(piece)] = piece
        mask[i, : len(piece)] = stream.soft_mask[start : start + span]
        keep[i, first : len(piece) - 1] = True
    device = model_device(model)
    inputs = torch.from_numpy(tokens).to(device)
    with autocast(device):
        logits = model(inputs[:, :-1], torch.from_numpy(mask).to(device)[:, :-1])
    nats = F.cross_entropy(
        logits.transpose(1, 2).float(), inputs[:, 1:].long(), reduction="none"
    )
    scored = torch.from_numpy(keep & is_base(tokens[:, 1:])).to(device)
    return float((nats * scored).sum()), int(scored.sum())


@torch.no_grad()
def bits_per_base(
    model: SeqLM, records: list[Record], overlap: int | None = None, batch: int = 8
) -> tuple[float, int]:
    """Bits per base of ``records`` (each read from its ``<sep>``), and the number of
    scored bases. Windows of ``context`` slide by ``context - overlap``, and each
    target is scored once with at least ``overlap`` positions of context (except
    at a record's start)."""
    model.eval()
    context = model.config.context
    overlap = context // 4 if overlap is None else overlap
    nats, count = 0.0, 0
    for record in records:
        stream = Stream.join([(record.tokens, record.soft_mask)])
        windows = list(sliding_windows(len(stream.tokens), context, overlap))
        for i in range(0, len(windows), batch):
            n, c = _score_windows(model, stream, windows[i : i + batch])
            nats, count = nats + n, count + c
    return nats / max(count, 1) / LOG2, count


@torch.no_grad()
def embed_records(model: SeqLM, records: list[Record]) -> np.ndarray:
    """Mean final hidden state of each record over non-overlapping windows: (R, D)."""
    model.eval()
    context = model.config.context
    out = np.zeros((len(records), model.config.width), np.float32)
    device = model_device(model)
    for r, record in enumerate(records):
        stream = Stream.join([(record.tokens, record.soft_mask)])
        total, n = torch.zeros(model.config.width, device=device), 0
        for s in range(0, len(stream.tokens), context):
            tokens = torch.from_numpy(stream.tokens[s : s + context].copy())
            mask = torch.from_numpy(stream.soft_mask[s : s + context].copy())
            with autocast(device):
                hidden = model.hidden(tokens[None].to(device), mask[None].to(device))
            total += hidden[0].float().sum(0)
            n += len(tokens)
        out[r] = (total / max(n, 1)).cpu().numpy()
    return out


def write_embeddings(path, names: list[str], embeddings: np.ndarray, model_dir) -> None:
    """safetensors file: ``embeddings`` (R, D) float32; record names in metadata."""
    metadata = {"names": json.dumps(names), "model": str(Path(model_dir))}
    with atomic_path(path) as tmp:
        save_file({"embeddings": torch.from_numpy(embeddings)}, str(tmp), metadata)
