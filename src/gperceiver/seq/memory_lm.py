"""The memory language model: exact memory of the training genomes + a learned mixer.

Training (leave-one-genome-out): the training files are the genome groups (or the
records, when only one file is given). For each group, a memory is built from the
*other* groups and the experts run causally over the group itself, so the mixer learns
how far a match in another genome can be trusted, never to copy the text it predicts.
The released memory then holds every group; held-out sequence is only ever seen
through its own causal prefix (the self-copy pointers).

A directory holds ``config.json`` (kind ``gperceiver-seq-memory``),
``mixer.safetensors`` and ``memory/`` (see :mod:`gperceiver.seq.memory`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import load_tensors, read_json, save_tensors, write_json
from ..device import resolve_device
from ..io import InputError
from ..params import resolve
from .experts import ExpertPass
from .fasta import SequenceFile
from .memory import BREAK, Memory, join_digits
from .mixer import MemoryMixer, MixerConfig

MEMORY_KIND = "gperceiver-seq-memory"
MEMORY_FORMAT_VERSION = 1
LOG2 = math.log(2.0)


@dataclass
class MemoryRunConfig:
    anchor_order: int = 16  # a 16-mer recurs by chance once per ~4 G positions
    samples_per_group: int = 600_000  # training positions drawn from each group
    val_fraction: float = 0.1  # tail of each group's positions kept for validation
    epochs: int = 4
    batch_size: int = 4096
    lr: float = 3e-3
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:N] (the mixer; experts run on CPU)

    def __post_init__(self):
        if not 0 < self.val_fraction < 0.5:
            raise ValueError("val_fraction must lie in (0, 0.5)")


def genome_groups(files: list[SequenceFile]) -> list[tuple[str, list[np.ndarray]]]:
    """(name, record token arrays) per file, or per record when one file is given."""
    if len(files) >= 2:
        return [(f.path, f.tokens) for f in files]
    groups = [(f"{files[0].path}:{i}", [t]) for i, t in enumerate(files[0].tokens)]
    if len(groups) < 2:
        raise InputError(
            files[0].path,
            None,
            "one record: the mixer is trained leave-one-genome-out",
            "pass two or more FASTA files (genomes) or records",
        )
    return groups


def recent_bases(x: np.ndarray, positions: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` digits before each position (``BREAK`` before the start):
    (M, L)."""
    idx = positions[:, None] - length + np.arange(length)
    out = x[np.clip(idx, 0, None)]
    out[idx < 0] = BREAK
    return out


def expert_inputs(memory, x, positions, anchor_order, context, chunk=1_000_000):
    """Yield (logp, z, pred, recent, target) numpy arrays for sorted ``positions``
    of ``x``, running the experts causally over ``x`` in chunks of positions."""
    experts = ExpertPass(memory, x, anchor_order)
    for i in range(0, max(len(positions), 1), chunk):
        part = positions[i : i + chunk]
        stop = int(part[-1]) + 1 if len(part) else len(x)
        logp, z, pred = experts.advance(stop, part)
        yield logp, z, pred, recent_bases(x, part, context), x[part]


def _collect(memory, x, positions, run, context):
    parts = list(expert_inputs(memory, x, positions, run.anchor_order, context))
    return [np.concatenate([p[j] for p in parts]) for j in range(5)]


def logo_examples(groups, run: MemoryRunConfig, context: int):
    """Training and validation arrays, each group scored against the others' memory."""
    rng = np.random.default_rng(run.seed)
    train, val = [], []
    for g, (_, records) in enumerate(groups):
        others = [t for h, (_, rs) in enumerate(groups) if h != g for t in rs]
        memory = Memory.build(join_digits(others, both_strands=True))
        x = join_digits(records, both_strands=False)
        bases = np.flatnonzero(x < 4)
        take = np.sort(
            rng.choice(len(bases), min(run.samples_per_group, len(bases)), False)
        )
        positions = bases[take]
        cut = bases[int(len(bases) * (1 - run.val_fraction))]
        arrays = _collect(memory, x, positions, run, context)
        is_val = positions >= cut
        train.append([a[~is_val] for a in arrays])
        val.append([a[is_val] for a in arrays])
        del memory
    join = lambda parts: [np.concatenate([p[j] for p in parts]) for j in range(5)]  # noqa: E731
    return join(train), join(val)


def _tensors(arrays, device):
    return [torch.from_numpy(a).to(device) for a in arrays]


def mixer_bits(mixer, arrays, batch=65536) -> float:
    """Mean bits per base of the mixer over example arrays."""
    device = next(mixer.parameters()).device
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(arrays[4]), batch):
            logp, z, pred, recent, y = _tensors(
                [a[i : i + batch] for a in arrays], device
            )
            logits = mixer(logp, z, pred, recent)
            total += F.cross_entropy(logits, y.long(), reduction="sum").item()
            n += len(y)
    return total / max(n, 1) / LOG2


def train_mixer(mixer, train, val, run: MemoryRunConfig, device) -> dict:
    """Adam over shuffled examples; the best validation epoch's weights are kept."""
    torch.manual_seed(run.seed)
    mixer.to(device)
    opt = torch.optim.Adam(mixer.parameters(), lr=run.lr)
    n = len(train[4])
    steps = run.epochs * math.ceil(n / run.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, run.lr, total_steps=max(steps, 1))
    best = (
        mixer_bits(mixer, val),
        {k: v.clone() for k, v in mixer.state_dict().items()},
    )
    history = [best[0]]
    generator = torch.Generator().manual_seed(run.seed)
    for _ in range(run.epochs):
        mixer.train()
        for idx in torch.randperm(n, generator=generator).split(run.batch_size):
            logp, z, pred, recent, y = _tensors([a[idx.numpy()] for a in train], device)
            loss = F.cross_entropy(mixer(logp, z, pred, recent), y.long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        mixer.eval()
        history.append(mixer_bits(mixer, val))
        if history[-1] < best[0]:
            best = (history[-1], {k: v.clone() for k, v in mixer.state_dict().items()})
    mixer.load_state_dict(best[1])
    return {"val_bits_per_base_by_epoch": [round(b, 5) for b in history]}


def pretrain_memory(files: list[SequenceFile], out, params: dict) -> dict:
    """Build the memory of FASTA ``files`` (read by the caller), train the mixer
    leave-one-genome-out and write both to ``out``. ``params``: flat JSON of
    :class:`MixerConfig` and :class:`MemoryRunConfig` fields. Returns the summary."""
    mixer_config, run = resolve((MixerConfig, MemoryRunConfig), {}, params, {})
    device = resolve_device(run.device)
    started = time.perf_counter()
    groups = genome_groups(files)
    train, val = logo_examples(groups, run, mixer_config.neural_context)
    features_s = time.perf_counter() - started
    mixer = MemoryMixer(mixer_config)
    deepest = float(-val[0][np.arange(len(val[4])), -1, val[4]].mean() / LOG2)
    history = train_mixer(mixer, train, val, run, device)
    memory = Memory.build(join_digits([t for _, rs in groups for t in rs], True))
    bases = int((memory.stream < 4).sum()) // 2
    summary = {
        "files": [f.path for f in files],
        "groups": [name for name, _ in groups],
        "train_examples": int(len(train[4])),
        "val_examples": int(len(val[4])),
        "val_bits_per_base": mixer_bits(mixer, val),
        "val_bits_deepest_count_expert": deepest,
        **history,
        "training_bases": bases,
        "memory_disk_bytes": int(memory.stream.nbytes + memory.order.nbytes),
        "memory_ram_bytes": int(memory.nbytes()),
        "memory_ram_mb_per_mb": round(memory.nbytes() / max(bases, 1), 2),
        "parameters": sum(p.numel() for p in mixer.parameters()),
        "features_seconds": round(features_s, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    MemoryLM(memory, mixer.cpu(), run).save(out, summary)
    return summary


def _memory(
    directory: Path, memory_from: list[SequenceFile] | None, summary: dict
) -> Memory:
    if (directory / "memory").exists():
        return Memory.load(directory / "memory")
    if not memory_from:
        raise InputError(
            directory, None, "no memory/ beside the mixer",
            "rebuild it: gperceiver seq pretrain TRAIN.fa ... --kind memory",
        )  # fmt: skip
    records = [t for f in memory_from for t in f.tokens]
    memory = Memory.build(join_digits(records, both_strands=True))
    bases = int((memory.stream < 4).sum()) // 2
    if bases != summary["training_bases"]:
        raise InputError(
            memory_from[0].path, None,
            f"{bases} bases, the mixer was trained with {summary['training_bases']}",
            f"pass the files it was trained on: {', '.join(summary['files'])}",
        )  # fmt: skip
    return memory


class MemoryLM:
    """Memory + mixer: ``log2_probs`` of every base of a digit stream, causally."""

    def __init__(self, memory: Memory, mixer: MemoryMixer, run: MemoryRunConfig):
        self.memory, self.mixer, self.run = memory, mixer.eval(), run

    def save(self, directory, summary: dict) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.memory.save(directory / "memory")
        save_tensors(self.mixer.state_dict(), directory / "mixer.safetensors")
        write_json(
            {
                "kind": MEMORY_KIND,
                "format_version": MEMORY_FORMAT_VERSION,
                "mixer": asdict(self.mixer.config),
                "run": asdict(self.run),
                "summary": summary,
            },
            directory / "config.json",
        )

    @classmethod
    def load(
        cls,
        directory,
        device: str = "cpu",
        memory_from: list[SequenceFile] | None = None,
    ) -> MemoryLM:
        """Read a directory written by :meth:`save`. Without ``memory/`` (the
        repository ships the mixer only), ``memory_from`` holds the training FASTA
        files (read by the caller) to rebuild the memory from; their base count
        must match the summary."""
        directory = Path(directory)
        config = read_json(directory / "config.json")
        if config.get("format_version") != MEMORY_FORMAT_VERSION:
            raise InputError(
                directory / "config.json",
                "format_version",
                f"memory model format {config.get('format_version')} is not supported "
                f"(this gperceiver reads {MEMORY_FORMAT_VERSION})",
                "rebuild it with `gperceiver seq pretrain --kind memory`",
            )
        mixer = MemoryMixer(MixerConfig(**config["mixer"]))
        mixer.load_state_dict(load_tensors(directory / "mixer.safetensors"))
        run = MemoryRunConfig(**config["run"])
        lm = cls(_memory(directory, memory_from, config["summary"]), mixer, run)
        lm.mixer.to(resolve_device(device))
        return lm

    @torch.no_grad()
    def log2_probs(self, x: np.ndarray) -> np.ndarray:
        """(T,) digits -> (T,) log2 p(x[t] | x[:t], memory); NaN where x[t] is no
        base."""
        out = np.full(len(x), np.nan)
        positions = np.flatnonzero(x < 4)
        context = self.mixer.config.neural_context
        device = next(self.mixer.parameters()).device
        row = 0
        for arrays in expert_inputs(
            self.memory, x, positions, self.run.anchor_order, context
        ):
            for i in range(0, len(arrays[4]), 65536):
                logp, z, pred, recent, y = _tensors(
                    [a[i : i + 65536] for a in arrays], device
                )
                logits = self.mixer(logp, z, pred, recent).float()
                lp = torch.log_softmax(logits, -1).gather(1, y.long()[:, None])[:, 0]
                out[positions[row : row + len(y)]] = (lp / LOG2).cpu().numpy()
                row += len(y)
        return out

    def bits_per_base(self, files: list[SequenceFile]) -> tuple[float, int]:
        """Bits per base of every A/C/G/T in FASTA ``files`` (each file one causal
        stream, its records joined by breaks), and the number of scored bases."""
        total, n = 0.0, 0
        for f in files:
            x = join_digits(f.tokens, both_strands=False)
            lp = self.log2_probs(x)
            scored = ~np.isnan(lp)
            total, n = total - lp[scored].sum(), n + int(scored.sum())
        return total / max(n, 1), n
