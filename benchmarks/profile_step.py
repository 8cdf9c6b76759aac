"""Where a train step's time goes: ``torch.profiler`` top operators of one step.

Two steps, built as :mod:`benchmarks.scale` builds them (random diploid biallelic
genotypes on 10 chromosomes, default configs unless ``--set`` overrides fields):

- ``masked``: one masked-marker pretraining step (batch, forward, backward,
  gradient clipping, AdamW step, as ``Trainer`` runs it);
- ``finetune``: one phenotype finetuning step of the default pool head (one
  block, MSE, no additive path) on the same genotypes.

Three warm-up steps, then one profiled step; the table lists operators by self
CPU time (the time inside the operator, not its callees); ``--timed N`` prints
the median time of N steps instead::

    python benchmarks/profile_step.py masked --markers 10000
    python benchmarks/profile_step.py finetune --markers 1279 --batch 32
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
from scale import parse_value, random_genotypes  # noqa: E402


def masked_step(genotypes, config, batch):
    from gperceiver.nn.perceiver import MaskedMarkerModel
    from gperceiver.tasks.masked import MaskedConfig, MaskedMarkerTask

    markers = genotypes.markers
    model = MaskedMarkerModel(config, markers.relative_pos(), markers.chrom)
    task = MaskedMarkerTask(genotypes, genotypes.allele_frequencies(), MaskedConfig())
    return model, lambda rows, gen: task.loss(model, rows, gen)[0]


def finetune_step(genotypes, config, batch):
    from gperceiver.nn.heads import HeadConfig, PhenotypeModel
    from gperceiver.tasks.phenotype import PhenotypeTask, Records, Scaling

    markers = genotypes.markers
    head = HeadConfig(n_environments=1, additive=False)
    model = PhenotypeModel(config, head, markers.relative_pos(), markers.chrom)
    n = genotypes.n_individuals
    rng = np.random.default_rng(1)
    records = Records(np.arange(n), rng.normal(size=(n, 1)), np.ones((n, 1)))
    task = PhenotypeTask(genotypes, records, "mse", Scaling.fit(records))
    return model, lambda rows, gen: task.loss(model, rows, gen)[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", choices=("masked", "finetune"))
    parser.add_argument("--markers", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rows", type=int, default=30, help="table rows shown")
    parser.add_argument(
        "--timed",
        type=int,
        default=0,
        help="instead of profiling, print the median time of this many steps",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads")
    parser.add_argument(
        "--shapes",
        action="store_true",
        help="one row per operator and input shapes (record_shapes)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--no-keep-freed-memory", action="store_true")
    args = parser.parse_args()
    from gperceiver.nn.perceiver import PerceiverConfig
    from gperceiver.train import TrainConfig, make_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.no_keep_freed_memory:  # as the command line does
        from gperceiver.allocator import keep_freed_memory

        keep_freed_memory(args.markers)
    genotypes = random_genotypes(args.markers, args.batch * 4)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    config = PerceiverConfig(
        n_alleles=2, ploidy=2, n_markers=args.markers, n_chroms=10, **overrides
    )
    build = masked_step if args.task == "masked" else finetune_step
    model, loss_of = build(genotypes, config, args.batch)
    train_config = TrainConfig()
    optimizer = make_optimizer(model, train_config)
    model.train()

    def step(i: int) -> None:
        n = genotypes.n_individuals
        rows = np.arange(n)[(i * args.batch) % n :][: args.batch]
        loss = loss_of(rows, torch.Generator().manual_seed(i))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()

    for i in range(3):
        step(i)
    if args.timed:
        times = []
        for i in range(3, 3 + args.timed):
            started = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - started)
        print(
            f"{args.task}, {args.markers:,} markers, batch {args.batch}, torch threads"
            f" {torch.get_num_threads()}: median step {statistics.median(times):.3f} s"
            f" of {args.timed} ({', '.join(f'{t:.3f}' for t in times)})"
        )
        return
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=args.shapes
    ) as p:
        step(3)
    events = p.key_averages(group_by_input_shape=args.shapes)
    total = sum(e.self_cpu_time_total for e in events)
    print(
        f"{args.task}, {args.markers:,} markers, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}: profiled step "
        f"{total / 1e6:.2f} s of operator self time"
    )
    print()
    print("| operator | calls | self CPU | share |")
    print("|---|---|---|---|")
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    for e in ranked[: args.rows]:
        shapes = f" {e.input_shapes}" if args.shapes else ""
        print(
            f"| `{e.key}`{shapes} | {e.count} | {e.self_cpu_time_total / 1e3:.1f} ms"
            f" | {e.self_cpu_time_total / total:.1%} |"
        )


if __name__ == "__main__":
    main()
