"""Where a masked-pretraining step's time goes, against the machine's own rates.

One process, one size. First the machine: an fp32 2048 x 2048 matmul's FLOP/s
(as ``scale.py``), and the memory bandwidth of a copy and of a sum over 256 MB.
Then the default model's train step (batch, forward, backward, gradient
clipping, AdamW, as ``scale.py`` and the trainer run it), timed without a
profiler: every ``torch.autograd.Function`` of ``gperceiver.nn`` (the token
attention, the window attention, the marker-token kernels, dropout, ...) is
wrapped with a timer for its forward and its backward, so each row is wall time
inside that function, and "rest" is everything else (linear layers, layer
norms, SDPA over the latents, small operators, Python). One extra step counts
the FLOPs each part executes (``FlopCounterMode`` inside each wrapper; the
numba kernels have registered formulas), so every row gets its FLOP/s and its
share of the matmul's.

A part whose FLOP/s is far below the matmul's moves little arithmetic per byte
or per call: compare its bytes with the bandwidth printed first. Nested
functions would be counted twice; none of the current ones nest.

    python benchmarks/step_parts.py --markers 10000 --threads 2 --steps 10
"""

from __future__ import annotations

import argparse
import collections
import inspect
import pkgutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import gperceiver  # noqa: F401  (first, as the CLI: GOMP_SPINCOUNT for torch)

# isort: split
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_step import masked_step  # noqa: E402
from scale import flop_counter, matmul_flops, random_genotypes  # noqa: E402

PHASES = ("forward", "backward", "clip", "adamw")


def bandwidth(n_floats: int = 1 << 26, repeats: int = 10) -> tuple[float, float]:
    """Bytes per second of a copy (read + write counted) and of a sum (read)."""
    a = torch.randn(n_floats)
    b = torch.empty_like(a)
    b.copy_(a), a.sum()  # warm up: pages in, threads up
    copy, read = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        t1 = time.perf_counter()
        a.sum()
        copy.append(t1 - t0)
        read.append(time.perf_counter() - t1)
    size = 4 * n_floats
    return 2 * size / statistics.median(copy), size / statistics.median(read)


class PartTimer:
    """Wraps the ``forward`` and ``backward`` of autograd Functions with timers
    (seconds in :attr:`seconds`) and, while :attr:`counting`, FLOP counters
    (FLOPs in :attr:`flops`), keyed ``"Class.forward"`` / ``"Class.backward"``."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.flops = collections.defaultdict(float)
        self.counting = False

    def wrap(self, cls: type) -> None:
        for method in ("forward", "backward"):
            setattr(cls, method, staticmethod(self._timed(cls, method)))

    def _timed(self, cls: type, method: str):
        inner, key = getattr(cls, method), f"{cls.__name__}.{method}"

        def timed(*args, **kwargs):
            if self.counting:
                with flop_counter() as counter:
                    out = inner(*args, **kwargs)
                self.flops[key] += counter.get_total_flops()
                return out
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds[key] += time.perf_counter() - t0
            return out

        return timed


def autograd_functions() -> list[type]:
    """Every ``torch.autograd.Function`` subclass defined in ``gperceiver.nn``."""
    import importlib

    import gperceiver.nn as nn_package

    found = []
    for info in pkgutil.iter_modules(nn_package.__path__):
        module = importlib.import_module(f"gperceiver.nn.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, torch.autograd.Function)
                and obj.__module__ == module.__name__
                and obj not in found
            ):
                found.append(obj)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markers", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    args = parser.parse_args()

    from gperceiver.allocator import keep_freed_memory
    from gperceiver.nn.perceiver import PerceiverConfig
    from gperceiver.train import TrainConfig, make_optimizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    keep_freed_memory(args.markers)  # as the command line does
    matmul, _ = matmul_flops()
    copy_bw, read_bw = bandwidth()

    timer = PartTimer()
    for cls in autograd_functions():
        timer.wrap(cls)
    n_rows = 4 * args.batch
    genotypes = random_genotypes(args.markers, n_rows)
    config = PerceiverConfig(n_alleles=2, ploidy=2, n_markers=args.markers, n_chroms=10)
    model, loss_of = masked_step(genotypes, config, args.batch)
    train = TrainConfig()
    optimizer = make_optimizer(model, train)
    model.train()
    phases = collections.defaultdict(float)

    def step(i: int) -> None:
        rows = np.arange(n_rows)[(i * args.batch) % n_rows :][: args.batch]
        t0 = time.perf_counter()
        loss = loss_of(rows, torch.Generator().manual_seed(i))
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        for phase, seconds in zip(
            PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True
        ):
            phases[phase] += seconds

    for i in range(args.warmup):
        step(i)
    with flop_counter() as whole:
        timer.counting = True
        step(args.warmup)
        timer.counting = False
    timer.seconds.clear()
    phases.clear()
    for i in range(args.steps):
        step(args.warmup + 1 + i)
    n = args.steps
    total = sum(phases.values()) / n
    total_flops = whole.get_total_flops()

    print(
        f"{args.markers:,} markers, batch {args.batch}, {args.threads} threads, "
        f"{n} steps; torch {torch.__version__}"
    )
    print(
        f"machine: fp32 matmul {matmul / 1e9:.0f} GFLOP/s, copy {copy_bw / 1e9:.1f} "
        f"GB/s, read {read_bw / 1e9:.1f} GB/s"
    )
    print(
        f"step {total * 1e3:.1f} ms: "
        + ", ".join(f"{p} {phases[p] / n * 1e3:.1f}" for p in PHASES)
        + f"; {total_flops / 1e9:.2f} GFLOP executed, "
        f"{total_flops / total / 1e9:.1f} GFLOP/s, "
        f"{100 * total_flops / total / matmul:.0f}% of matmul\n"
    )
    print("| part | ms / step | share of step | GFLOP | GFLOP/s | % of matmul |")
    print("|---|---|---|---|---|---|")
    rows = sorted(timer.seconds.items(), key=lambda kv: -kv[1])
    parts_seconds = sum(s for _, s in rows) / n
    parts_flops = sum(timer.flops.values())
    rows.append(("rest", (total - parts_seconds) * n))
    for key, seconds in rows:
        seconds /= n
        flops = total_flops - parts_flops if key == "rest" else timer.flops[key]
        rate = flops / seconds if seconds > 0 else 0.0
        print(
            f"| {key} | {seconds * 1e3:.1f} | {100 * seconds / total:.0f}% | "
            f"{flops / 1e9:.3f} | {rate / 1e9:.1f} | {100 * rate / matmul:.0f}% |"
        )


if __name__ == "__main__":
    main()
