"""Scale benchmark: memory, time and FLOP/s of one masked-marker train step vs markers.

For each size a fresh subprocess builds random diploid biallelic genotypes, the
default :class:`PerceiverConfig` (unless ``--set`` overrides fields), the
masked-marker task with its default target fraction and the training optimiser,
then measures

- peak RSS (``ru_maxrss``) after building everything and after the steps;
- the median wall time of a train step (batch, forward, backward, gradient
  clipping, AdamW step, exactly as :class:`gperceiver.train.Trainer` runs it);
- the useful FLOPs of one step: 3 x the FLOPs of its forward pass (backward
  costs two matmuls per forward matmul), counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on a forward pass alone, so
  recomputation under activation checkpointing is not counted (SDPA's CPU kernel
  is counted with the same formula as its GPU kernels), and the FLOP/s they
  imply; beside them the FLOPs the step executes (the counter on a whole train
  step, recomputation included);
- a plain fp32 2048 x 2048 matmul's FLOP/s in the same process, for reference:
  one product after each timed step, the median of them, so that the step and
  its reference sample the same minutes of a machine whose speed drifts (on the
  session-16 box one product measured once read 110-185 GFLOP/s from one run to
  the next); its three 16 MB matrices count in the peak RSS since session 16;
- with the allocator settings of the command line: freed memory kept up to
  ``gperceiver.allocator.MARKER_LIMIT`` markers; ``--huge-pages`` puts torch's
  large tensors on 2 MB pages (``THP_MEM_ALLOC_ENABLE=1``);
- the same per CPU second (``time.process_time``) beside wall time: on a shared
  machine the process's own CPU time is far less inflated by other processes than
  its wall time (with one thread, both agree on an idle machine).

    python benchmarks/scale.py                      # 10k, 50k, 100k, 500k markers
    python benchmarks/scale.py --sizes 100000 --set checkpoint_attention=false
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def matmul_flops(n: int = 2048, repeats: int = 10) -> tuple[float, float]:
    """FLOP per wall second and per CPU second of an fp32 n x n matmul."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = matmul_once(a, b)
        walls.append(wall)
        cpus.append(cpu)
    return 2 * n**3 / statistics.median(walls), 2 * n**3 / statistics.median(cpus)


def matmul_once(a, b) -> tuple[float, float]:
    """Wall and CPU seconds of one product ``a @ b``."""
    t0, c0 = time.perf_counter(), time.process_time()
    a @ b
    return time.perf_counter() - t0, time.process_time() - c0


def flop_counter():
    """FlopCounterMode that also counts PyTorch's CPU flash-attention kernel."""
    import torch
    from torch.utils.flop_counter import (
        FlopCounterMode,
        baddbmm_flop,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    aten = torch.ops.aten

    def forward(query, key, value, *args, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    def in_place(self, batch1, batch2, *args, **kwargs):  # torch counts baddbmm only
        return baddbmm_flop(self, batch1, batch2)

    custom = {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
        aten.baddbmm_: in_place,
    }
    return FlopCounterMode(display=False, custom_mapping=custom)


def random_genotypes(n_markers: int, n_individuals: int, n_chroms: int = 10):
    """Random diploid biallelic :class:`Genotypes` (seed 0) on ``n_chroms``
    equal chromosomes, allele frequencies uniform in 0.05..0.5."""
    from gperceiver.data import Genotypes, MarkerMap

    rng = np.random.default_rng(0)
    chrom = np.repeat(
        [f"chr{c + 1}" for c in range(n_chroms)], -(-n_markers // n_chroms)
    )
    chrom = chrom[:n_markers]
    markers, _ = MarkerMap.from_columns(
        chrom, [f"m{i}" for i in range(n_markers)], np.arange(n_markers) * 1000.0 + 1
    )
    freq = rng.uniform(0.05, 0.5, n_markers)
    # uint8 from the start: float64 / int64 temporaries would inflate the peak RSS
    alleles = np.empty((n_individuals, n_markers, 2), dtype=np.uint8)
    for i in range(n_individuals):
        draws = rng.random((n_markers, 2), dtype=np.float32) < freq[:, None]
        alleles[i] = 1 + draws
    return Genotypes(
        np.sort(alleles, axis=-1),
        np.array([f"i{i}" for i in range(n_individuals)]),
        markers,
        2,
    )


def child(
    n_markers: int,
    batch: int,
    steps: int,
    overrides: dict,
    threads: int,
    limit_gb: float,
    keep_freed: bool = True,
) -> dict:
    import gperceiver  # noqa: F401  (first, as the CLI: GOMP_SPINCOUNT for torch)

    # isort: split
    import torch

    from gperceiver.allocator import keep_freed_memory

    if limit_gb:
        # a failed allocation beats the kernel's OOM killer picking another process
        limit = int(limit_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if threads:
        torch.set_num_threads(threads)
    load_start = os.getloadavg()[0]
    # as the command line does once the genotypes are read
    kept = keep_freed_memory(n_markers) if keep_freed else False

    from gperceiver.nn.perceiver import MaskedMarkerModel, PerceiverConfig
    from gperceiver.tasks.masked import MaskedConfig, MaskedMarkerTask
    from gperceiver.train import TrainConfig, make_optimizer

    rss_import = peak_rss_gb()
    n_chroms, n_individuals = 10, batch * 4
    genotypes = random_genotypes(n_markers, n_individuals, n_chroms)
    markers = genotypes.markers
    config = PerceiverConfig(
        n_alleles=2, ploidy=2, n_markers=n_markers, n_chroms=n_chroms, **overrides
    )
    model = MaskedMarkerModel(config, markers.relative_pos(), markers.chrom)
    train_config = TrainConfig()
    task = MaskedMarkerTask(genotypes, genotypes.allele_frequencies(), MaskedConfig())
    optimizer = make_optimizer(model, train_config)
    model.train()

    def step(i: int) -> None:
        rows = np.arange(n_individuals)[(i * batch) % n_individuals :][:batch]
        generator = torch.Generator().manual_seed(i)
        loss, _ = task.loss(model, rows, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()

    rss_built = peak_rss_gb()
    step(0)  # warm-up: allocator, optimizer state
    n = 2048  # the reference product, one after each step
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul_once(a, b)
    times, cpu_times, products = [], [], []
    for i in range(1, steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        step(i)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        products.append(matmul_once(a, b))
    del a, b
    rss_steps = peak_rss_gb()
    counter = flop_counter()
    with counter:
        step(steps + 1)
    executed = counter.get_total_flops()
    counter = flop_counter()
    with counter:  # forward only: recomputation happens in backward
        rows = np.arange(batch)
        task.loss(model, rows, torch.Generator().manual_seed(steps + 2))
    flops = 3 * counter.get_total_flops()
    median, cpu_median = statistics.median(times), statistics.median(cpu_times)
    matmul = 2 * n**3 / statistics.median(wall for wall, _ in products)
    matmul_cpu = 2 * n**3 / statistics.median(cpu for _, cpu in products)
    return {
        "markers": n_markers,
        "batch": batch,
        "keep_freed_memory": kept,
        "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        "parameters": sum(p.numel() for p in model.parameters()),
        "rss_import_gb": rss_import,
        "rss_built_gb": rss_built,
        "rss_peak_gb": rss_steps,
        "step_s": median,
        "step_times": times,
        "step_cpu_s": cpu_median,
        "step_cpu_times": cpu_times,
        "flops": flops,
        "flops_executed": executed,
        "flops_per_s": flops / median,
        "matmul_flops_per_s": matmul,
        "flops_per_cpu_s": flops / cpu_median,
        "matmul_flops_per_cpu_s": matmul_cpu,
        "threads": torch.get_num_threads(),
        "load": (load_start + os.getloadavg()[0]) / 2,
        # an epoch of 5,000 individuals: 625 steps of the mean measured step
        "epoch_5000_h": 5000 / batch * statistics.mean(times) / 3600,
        "epoch_5000_cpu_h": 5000 / batch * statistics.mean(cpu_times) / 3600,
        "config": config.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,50000,100000,500000")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a PerceiverConfig field, e.g. chunk_size=4096",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: torch's choice, one per core)",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=16,
        help="address-space limit of each child (0: none); a size that "
        "needs more fails with an out-of-memory error instead of "
        "waking the kernel's OOM killer",
    )
    parser.add_argument(
        "--no-keep-freed-memory",
        action="store_true",
        help="leave glibc's malloc as it is (the command line keeps freed memory "
        "up to gperceiver.allocator.MARKER_LIMIT markers)",
    )
    parser.add_argument(
        "--huge-pages",
        action="store_true",
        help="run the children with THP_MEM_ALLOC_ENABLE=1 (torch's large tensors "
        "on 2 MB pages, see gperceiver.allocator); default: as the environment says",
    )
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)

    if args.child:
        print(
            json.dumps(
                child(
                    args.child,
                    args.batch,
                    args.steps,
                    overrides,
                    args.threads,
                    args.memory_limit_gb,
                    not args.no_keep_freed_memory,
                )
            )
        )
        return

    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        command = [
            sys.executable,
            __file__,
            "--child",
            str(size),
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--memory-limit-gb",
            str(args.memory_limit_gb),
        ]
        if args.no_keep_freed_memory:
            command.append("--no-keep-freed-memory")
        for item in args.set:
            command += ["--set", item]
        env = dict(os.environ)
        if args.huge_pages:
            env["THP_MEM_ALLOC_ENABLE"] = "1"
        t0 = time.perf_counter()
        run = subprocess.run(
            command, capture_output=True, text=True, check=False, env=env
        )
        if run.returncode:
            last = (run.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{size} markers failed ({run.returncode}): {last}", file=sys.stderr)
            rows.append({"markers": size, "error": last[:200]})
            continue
        result = json.loads(run.stdout.strip().splitlines()[-1])
        result["process_s"] = time.perf_counter() - t0
        rows.append(result)
        print(f"{size} markers done in {result['process_s']:.0f} s", file=sys.stderr)

    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    threads = next((r["threads"] for r in rows if "threads" in r), "?")
    print(
        f"batch {args.batch}, median of {args.steps} steps after one warm-up;"
        f" torch threads {threads}; overrides: {overrides or 'none'};"
        " load = mean of the 1-min load average at start and end of each child;"
        " 2 MB pages (THP_MEM_ALLOC_ENABLE=1):"
        f" {os.environ.get('THP_MEM_ALLOC_ENABLE') == '1' or args.huge_pages}"
    )
    print()
    print(
        "| markers | peak RSS | RSS before 1st step | step time | GFLOP / step "
        "| executed GFLOP | train GFLOP/s | matmul GFLOP/s | share of matmul "
        "| step CPU time | share of matmul, CPU time | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['markers']:,} | failed: {r['error']} |" + " |" * 10)
            continue
        cpu_share = r["flops_per_cpu_s"] / r["matmul_flops_per_cpu_s"]
        print(
            f"| {r['markers']:,} | {r['rss_peak_gb']:.2f} GiB"
            f" | {r['rss_built_gb']:.2f} GiB"
            f" | {r['step_s']:.2f} s | {r['flops'] / 1e9:.1f}"
            f" | {r['flops_executed'] / 1e9:.1f}"
            f" | {r['flops_per_s'] / 1e9:.1f} | {r['matmul_flops_per_s'] / 1e9:.1f}"
            f" | {r['flops_per_s'] / r['matmul_flops_per_s']:.0%}"
            f" | {r['step_cpu_s']:.2f} s | {cpu_share:.0%} | {r['load']:.1f} |"
        )

    print()
    for r in rows:
        if "error" not in r:
            print(
                f"{r['markers']:,} markers: an epoch of 5,000 individuals"
                f" ({5000 / args.batch:.0f} steps of the mean of {args.steps})"
                f" projects to {r['epoch_5000_h']:.2f} h wall,"
                f" {r['epoch_5000_cpu_h']:.2f} h of CPU time"
            )


if __name__ == "__main__":
    main()
