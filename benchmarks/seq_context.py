"""Memory and time of one training step (forward + backward) vs context length,
exact vs Performer (FAVOR+) vs hierarchical attention, measured in one run.

Each (attention, length) pair runs in a fresh subprocess so that its peak resident
memory (CPU) or peak allocated memory (CUDA) belongs to that step alone; the
reported memory is the peak minus the memory held before the step (model, input).
Model: the default width/heads with ``--depth`` blocks (default 1, so the 64k exact
step stays within minutes on one CPU core); time and memory grow linearly in depth.

Usage: python benchmarks/seq_context.py [--device cpu|cuda] [--lengths 1024,...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from gperceiver.seq.model import SeqConfig, SeqLM

LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]


def resident_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_step(attention: str, length: int, depth: int, device: str) -> dict:
    """Time and extra memory of forward + backward of batch 1 at ``length``."""
    torch.manual_seed(0)
    model = SeqLM(SeqConfig(attention=attention, depth=depth, context=length))
    model = model.to(device).train()
    tokens = torch.randint(2, 6, (1, length + 1), device=device)
    warmups = 1 if length <= 8192 else 0
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = resident_mib()
    for _ in range(warmups + 1):  # the last pass is timed
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:])
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - tick
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "attention": attention,
        "length": length,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(length / seconds),
        "step_mib": round(peak - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--attention", default="exact,performer,hierarchical")
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: ATTENTION,LENGTH
    args = parser.parse_args()
    if args.one:
        attention, length = args.one.split(",")
        print(json.dumps(one_step(attention, int(length), args.depth, args.device)))
        return
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"device {args.device}, depth {args.depth}",
        flush=True,
    )
    rows = []
    for length in map(int, args.lengths.split(",")):
        for attention in args.attention.split(","):
            result = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    f"{attention},{length}",
                    "--depth",
                    str(args.depth),
                    "--device",
                    args.device,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode:
                row = {
                    "attention": attention,
                    "length": length,
                    "error": result.stderr.strip().splitlines()[-1],
                }
            else:
                row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| tokens | attention | s / step | tokens / s | step memory (MiB) |")
    print("|---:|---|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['length']} | {row['attention']} | failed: {row['error']} |")
        else:
            print(
                f"| {row['length']} | {row['attention']} | {row['seconds']} | "
                f"{row['tokens_per_s']} | {row['step_mib']} |"
            )


if __name__ == "__main__":
    main()
