"""The numba kernels launched serially or in parallel, in one train step.

One process builds the masked-pretraining step as :mod:`benchmarks.scale` does
and alternates, round by round, a step with every kernel of
:mod:`gperceiver.nn.kernels` serial and one with them parallel (torch's own
threads as ``--threads`` says either way); medians of wall and CPU seconds::

    python benchmarks/kernel_launch.py --markers 100000 --rounds 8 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import gperceiver  # noqa: F401  (first, as the CLI: GOMP_SPINCOUNT for torch)

# isort: split
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import random_genotypes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markers", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from gperceiver.allocator import keep_freed_memory
    from gperceiver.nn import kernels
    from gperceiver.nn.perceiver import MaskedMarkerModel, PerceiverConfig
    from gperceiver.tasks.masked import MaskedConfig, MaskedMarkerTask
    from gperceiver.train import TrainConfig, make_optimizer

    torch.set_num_threads(args.threads)
    n, b = args.markers, args.batch
    keep_freed_memory(n)
    g = random_genotypes(n, b * 4, 10)
    config = PerceiverConfig(n_alleles=2, ploidy=2, n_markers=n, n_chroms=10)
    model = MaskedMarkerModel(config, g.markers.relative_pos(), g.markers.chrom)
    task = MaskedMarkerTask(g, g.allele_frequencies(), MaskedConfig())
    optimizer = make_optimizer(model, TrainConfig())
    model.train()

    def step(i: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        rows = np.arange(b * 4)[(i * b) % (b * 4) :][:b]
        loss, _ = task.loss(model, rows, torch.Generator().manual_seed(i))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0, time.process_time() - c0

    modes = {"serial": 1 << 30, "parallel": kernels.MIN_THREADS}
    step(0)
    for min_threads in modes.values():  # compile both variants before timing
        kernels.MIN_THREADS = min_threads
        step(0)
    times = {mode: [] for mode in modes}
    for r in range(1, args.rounds + 1):
        for mode, min_threads in modes.items():
            kernels.MIN_THREADS = min_threads
            times[mode].append(step(r))
    print(
        f"{n:,} markers, batch {b}, {args.threads} torch threads, {args.rounds} rounds"
    )
    for mode, values in times.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{mode:9s} wall {wall:.3f} s, CPU {cpu:.3f} s")


if __name__ == "__main__":
    main()
