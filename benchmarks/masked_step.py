"""Time of one masked-pretraining train step (forward, backward, AdamW) on the
imputation benchmark's data, with the default model.

Run it once per code version to compare, e.g. the current tree against a
worktree of an older commit, back to back on the same machine::

    git worktree add /tmp/old fe8e40c~1
    export OMP_NUM_THREADS=1
    PYTHONPATH=/tmp/old/src python benchmarks/masked_step.py /tmp/bench/data
    python benchmarks/masked_step.py /tmp/bench/data

``DATA`` holds ``chroms.tsv`` and ``markers.tsv`` (``benchmarks/imputation.py``
writes them in its workdir).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from gperceiver import io
from gperceiver.nn.perceiver import PerceiverConfig
from gperceiver.pretraining import build_model, data_sizes
from gperceiver.tasks.masked import MaskedConfig, MaskedMarkerTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    genotypes = io.read_markers(
        args.data / "markers.tsv", io.read_chroms(args.data / "chroms.tsv")
    )
    torch.manual_seed(0)
    model = build_model(PerceiverConfig(**data_sizes(genotypes)), genotypes, "masked")
    rows = np.arange(genotypes.n_individuals)
    frequencies = genotypes.allele_frequencies(rows)
    task = MaskedMarkerTask(genotypes, frequencies, MaskedConfig())
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    seconds = []
    for step in range(args.steps):
        started = time.perf_counter()
        batch = rows[step * args.batch_size : (step + 1) * args.batch_size]
        loss, _ = task.loss(model, batch, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    print(
        f"{genotypes.n_markers} markers, batch {args.batch_size}: seconds per step "
        f"{[round(s, 2) for s in seconds]}, last loss {loss.item():.5f}"
    )


if __name__ == "__main__":
    main()
