"""Two versions of the code, one masked-pretraining step each in turn.

On a shared or virtual machine the same step's time drifts by 10-20% within an
hour (BENCHMARKS.md, *Scale*), more than most changes gain. This script puts
the variants side by side in time: each ``--tree NAME=SRC`` (a ``src`` folder,
e.g. of a ``git worktree`` at another commit) gets its own long-lived child
process that builds the model and the task as :mod:`benchmarks.scale` does
(same seeds, so the variants see the same batches), and the children take turns,
one step each, for ``--rounds`` rounds after one warm-up step each. The table
gives every variant's median wall and CPU time per step and its ratio to the
first variant's in the same rounds::

    git worktree add /tmp/base HEAD~1
    python benchmarks/alternate_step.py --tree base=/tmp/base/src --tree new=src \\
        --markers 10000 --rounds 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def child(markers: int, batch: int, threads: int) -> None:
    """Build the step, then run one step per line read from stdin and answer
    with its wall and CPU seconds as a JSON line."""
    import gperceiver  # noqa: F401  (first, as the CLI: GOMP_SPINCOUNT for torch)

    # isort: split
    import torch

    sys.path.insert(0, str(HERE))
    from scale import random_genotypes

    from gperceiver.allocator import keep_freed_memory
    from gperceiver.nn.perceiver import MaskedMarkerModel, PerceiverConfig
    from gperceiver.tasks.masked import MaskedConfig, MaskedMarkerTask
    from gperceiver.train import TrainConfig, make_optimizer

    torch.set_num_threads(threads)
    keep_freed_memory(markers)
    torch.manual_seed(0)
    n_individuals = batch * 4
    genotypes = random_genotypes(markers, n_individuals, 10)
    config = PerceiverConfig(n_alleles=2, ploidy=2, n_markers=markers, n_chroms=10)
    model = MaskedMarkerModel(
        config, genotypes.markers.relative_pos(), genotypes.markers.chrom
    )
    task = MaskedMarkerTask(genotypes, genotypes.allele_frequencies(), MaskedConfig())
    train = TrainConfig()
    optimizer = make_optimizer(model, train)
    model.train()
    print(json.dumps({"ready": True}), flush=True)
    for i, _ in enumerate(sys.stdin):
        rows = np.arange(n_individuals)[(i * batch) % n_individuals :][:batch]
        t0, c0 = time.perf_counter(), time.process_time()
        loss, _ = task.loss(model, rows, torch.Generator().manual_seed(i))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"wall": wall, "cpu": cpu, "loss": loss.item()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=SRC")
    parser.add_argument("--markers", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--huge-pages", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.markers, args.batch, args.threads)
    trees = [t.split("=", 1) for t in args.tree]
    if not trees or any(len(t) != 2 for t in trees):
        parser.error("give each variant as --tree NAME=SRC")
    children = {}
    for name, src in trees:
        env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
        if args.huge_pages:
            env["THP_MEM_ALLOC_ENABLE"] = "1"
        command = [sys.executable, __file__, "--child", "--markers", str(args.markers)]
        command += ["--batch", str(args.batch), "--threads", str(args.threads)]
        children[name] = subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert json.loads(children[name].stdout.readline())["ready"]
    results = {name: [] for name in children}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, proc in children.items():
            proc.stdin.write("step\n")
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline())
            if r:
                results[name].append(answer)
    load.append(os.getloadavg()[0])
    for proc in children.values():
        proc.stdin.close()
        proc.wait()
    first = next(iter(results))
    print(
        f"{args.markers:,} markers, batch {args.batch}, {args.threads} thread(s), "
        f"{args.rounds} alternating rounds, 1-min load {load[0]:.1f} -> {load[1]:.1f}"
    )
    print("| variant | median wall s | median CPU s | CPU vs first | last loss |")
    print("|---|---|---|---|---|")
    base = [s["cpu"] for s in results[first]]
    for name, steps in results.items():
        cpu = [s["cpu"] for s in steps]
        ratio = statistics.median(c / b for c, b in zip(cpu, base, strict=True))
        print(
            f"| {name} | {statistics.median(s['wall'] for s in steps):.4f} | "
            f"{statistics.median(cpu):.4f} | {ratio:.3f} | {steps[-1]['loss']:.5f} |"
        )


if __name__ == "__main__":
    main()
