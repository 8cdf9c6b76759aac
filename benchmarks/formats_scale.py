"""Out-of-core benchmark: a simulated cohort in VCF Zarr, VCF -> Zarr conversion,
and masked pretraining streamed from the store.

Genotypes are mosaics of 32 founder haplotypes (a switch every ~1,000 markers on
average, founder allele frequencies ~ Beta(0.4, 0.4)), diploid biallelic, 1% missing
calls: cheap to make at 5,000 x 500,000 and with the local correlation a masked
model can learn. Each stage runs ``gperceiver`` in a child process and reports its
wall time and peak RSS (``ru_maxrss`` of the child).

    python benchmarks/formats_scale.py store --individuals 5000 --markers 500000 \\
        --out /tmp/fbench/cohort.zarr
    python benchmarks/formats_scale.py vcf --individuals 5000 --markers 20000 \\
        --out /tmp/fbench/slice.vcf          # then: gperceiver convert slice.vcf x.zarr
    python benchmarks/formats_scale.py run -- convert /tmp/fbench/slice.vcf x.zarr
    python benchmarks/formats_scale.py run -- pretrain /tmp/fbench/cohort.zarr \\
        --out /tmp/fbench/model --max-steps 5 --no-progress
    python benchmarks/formats_scale.py run -- impute /tmp/fbench/cohort.zarr \\
        --out /tmp/fbench/imputed.vcf.gz --shortlist 128   # streamed by stretches
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

FOUNDERS = 32
SWITCH_RATE = 1e-3  # founder switches per marker along a haplotype
MISSING_RATE = 0.01


def founder_calls(
    rng: np.random.Generator, n_individuals: int, n_markers: int
) -> np.ndarray:
    """Calls ``(V, N, 2)`` int8 (0 = REF, 1 = ALT, -1 = missing) of one block."""
    freq = rng.beta(0.4, 0.4, size=n_markers)
    founders = (rng.random((FOUNDERS, n_markers)) < freq).astype(np.int8)  # (F, V)
    haplotypes = 2 * n_individuals
    switch = rng.random((haplotypes, n_markers), dtype=np.float32) < SWITCH_RATE
    segment = np.cumsum(switch, axis=1, dtype=np.int32)  # (H, V)
    choice = rng.integers(
        0, FOUNDERS, size=(haplotypes, int(segment.max()) + 1), dtype=np.uint8
    )
    founder = np.take_along_axis(choice, segment, axis=1)  # (H, V)
    del switch, segment
    alleles = founders[founder, np.arange(n_markers)[None, :]]  # (H, V)
    calls = alleles.reshape(n_individuals, 2, n_markers).transpose(2, 0, 1).copy()
    calls.sort(axis=-1)
    missing = rng.random((n_markers, n_individuals), dtype=np.float32) < MISSING_RATE
    calls[missing] = -1
    return calls


def cohort_blocks(n_individuals: int, n_markers: int, block: int, seed: int):
    """Variant blocks of the simulated cohort on 10 chromosomes, positions in bp."""
    from gperceiver.io.variants import VariantBlock

    rng = np.random.default_rng(seed)
    per_chrom = -(-n_markers // 10)
    for start in range(0, n_markers, block):
        stop = min(start + block, n_markers)
        index = np.arange(start, stop)
        chrom = index // per_chrom + 1
        pos = (index % per_chrom) * 100 + 1  # one marker per 100 bp
        yield VariantBlock(
            chrom.astype(str),
            pos.astype(np.int64),
            np.full(stop - start, np.nan),
            np.array([f"m{i}" for i in index]),
            np.tile(np.array(["A", "C"]), (stop - start, 1)),
            founder_calls(rng, n_individuals, stop - start),
        )


def sample_names(n: int) -> np.ndarray:
    return np.array([f"ind{i:05d}" for i in range(n)])


def make_store(args) -> None:
    from gperceiver.io.zarr_store import write_zarr

    t0 = time.perf_counter()
    blocks = cohort_blocks(args.individuals, args.markers, 10_000, args.seed)
    n = write_zarr(blocks, sample_names(args.individuals), args.out)
    print(
        json.dumps(
            {
                "stage": "simulate+write store",
                "variants": n,
                "seconds": round(time.perf_counter() - t0, 1),
                "store_bytes": du(args.out),
                "peak_rss_gib": peak_rss(resource.RUSAGE_SELF),
            }
        )
    )


def make_vcf(args) -> None:
    """A plain-text VCF of the cohort written with numpy byte tables (fast)."""
    t0 = time.perf_counter()
    gt = np.frombuffer(b"./.\t0/0\t0/1\t1/1\t", dtype=np.uint8).reshape(4, 4)
    with open(args.out, "wb") as out:
        out.write(b"##fileformat=VCFv4.2\n")
        out.write(b'##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')
        for c in range(1, 11):
            out.write(f"##contig=<ID={c},length=1000000000>\n".encode())
        header = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t"
        out.write((header + "\t".join(sample_names(args.individuals)) + "\n").encode())
        for block in cohort_blocks(args.individuals, args.markers, 10_000, args.seed):
            code = np.where(block.calls[..., 0] < 0, 0, 1 + block.calls.sum(-1))
            body = gt[code].reshape(len(block), -1)  # (V, N * 4)
            body[:, -1] = ord("\n")
            for j in range(len(block)):
                fixed = (
                    f"{block.contig[j]}\t{block.position[j]}\t{block.ids[j]}"
                    "\tA\tC\t.\tPASS\t.\tGT\t"
                )
                out.write(fixed.encode() + body[j].tobytes())
    print(
        json.dumps(
            {
                "stage": "write vcf",
                "seconds": round(time.perf_counter() - t0, 1),
                "bytes": os.path.getsize(args.out),
            }
        )
    )


def run_child(args) -> None:
    """Run ``gperceiver ARGS`` in a child process; report wall time and peak RSS."""
    command = [sys.executable, "-m", "gperceiver", *args.command]
    t0 = time.perf_counter()
    done = subprocess.run(command, check=False)
    print(
        json.dumps(
            {
                "stage": " ".join(args.command[:1]),
                "returncode": done.returncode,
                "wall_seconds": round(time.perf_counter() - t0, 1),
                "peak_rss_gib": peak_rss(resource.RUSAGE_CHILDREN),
                "cpu_seconds": round(cpu_seconds(resource.RUSAGE_CHILDREN), 1),
                "load_average": os.getloadavg()[0],
            }
        )
    )


def cpu_seconds(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def peak_rss(who) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024**2, 2)  # KiB -> GiB


def du(path) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path)
        for f in files
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, func in (("store", make_store), ("vcf", make_vcf)):
        p = sub.add_parser(name)
        p.add_argument("--individuals", type=int, default=5000)
        p.add_argument("--markers", type=int, default=500_000)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True)
        p.set_defaults(func=func)
    p = sub.add_parser("run", help="gperceiver ARGS in a child process")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=run_child)
    args = parser.parse_args()
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    args.func(args)


if __name__ == "__main__":
    main()
