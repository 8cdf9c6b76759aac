"""User and system CPU time and minor page faults of single masked-pretraining
steps (batch 8, one thread, default config, random genotypes as
:mod:`benchmarks.scale` builds them), with or without
:func:`gperceiver.allocator.keep_freed_memory`::

    python benchmarks/page_faults.py --markers 100000 --steps 3
    python benchmarks/page_faults.py --markers 100000 --steps 3 --keep-freed-memory

(``THP_MEM_ALLOC_ENABLE=1`` in the environment tries PyTorch's 2 MB pages.)
"""

from __future__ import annotations

import argparse
import resource
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markers", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--keep-freed-memory", action="store_true")
    args = parser.parse_args()
    from gperceiver.allocator import keep_freed_memory
    from gperceiver.nn.perceiver import MaskedMarkerModel, PerceiverConfig
    from gperceiver.tasks.masked import MaskedConfig, MaskedMarkerTask
    from gperceiver.train import TrainConfig, make_optimizer

    torch.set_num_threads(1)
    kept = keep_freed_memory(args.markers) if args.keep_freed_memory else False
    n, b = args.markers, args.batch
    g = random_genotypes(n, b * 4, 10)
    config = PerceiverConfig(n_alleles=2, ploidy=2, n_markers=n, n_chroms=10)
    model = MaskedMarkerModel(config, g.markers.relative_pos(), g.markers.chrom)
    task = MaskedMarkerTask(g, g.allele_frequencies(), MaskedConfig())
    train = TrainConfig()
    optimizer = make_optimizer(model, train)
    model.train()

    def step(i: int) -> None:
        rows = np.arange(b * 4)[(i * b) % (b * 4) :][:b]
        loss, _ = task.loss(model, rows, torch.Generator().manual_seed(i))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()

    step(0)  # warm-up
    print(f"{n:,} markers, batch {b}, freed memory kept: {kept}")
    for i in range(1, args.steps + 1):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step(i)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        print(
            f"step {i}: wall {time.perf_counter() - t0:.2f} s, user "
            f"{r1.ru_utime - r0.ru_utime:.2f} s, system {r1.ru_stime - r0.ru_stime:.2f}"
            f" s, minor faults {r1.ru_minflt - r0.ru_minflt:,}, peak RSS "
            f"{r1.ru_maxrss / 2**20:.2f} GiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
