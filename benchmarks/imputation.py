"""Imputation benchmark: gperceiver vs Beagle 5, per-marker mode and kNN.

Simulates an msprime panel (default 1,000 diploids x 20,000 SNPs on 4 chromosomes
of 100 Mb at 1 cM/Mb, i.e. 1 Morgan each, Ne = 100), hides 10 % of the genotypes
(whole genotypes, seeded) and scores every method on exactly those entries:
concordance (share recovered exactly) and allelic r^2 (squared Pearson
correlation of true and imputed allele-2 dosage, hard calls, both centred at the
marker's mean observed dosage, pooled over the hidden entries of a bin) overall
and by minor-allele-frequency bin (MAF of the true, complete genotypes).

Every method's result is cached in ``WORKDIR/results/<label>.npz``; the table
covers all cached results, so extra runs (other options) just add rows::

    python benchmarks/imputation.py --workdir /tmp/bench
    python benchmarks/imputation.py --workdir /tmp/bench --methods gperceiver \\
        --label gperceiver-fast --gperceiver-args="--epochs 3"
    python benchmarks/imputation.py --workdir /tmp/bench --methods none  # table only
    # a trained model's calls with the target-sampling prior divided out
    python benchmarks/imputation.py --workdir /tmp/bench \\
        --methods gperceiver-corrected --label gperceiver-fast-corrected \\
        --model /tmp/bench/gperceiver-fast/imputed.tsv.model

Needs ``beagle`` (Debian package ``beagle``, Beagle 5) on PATH for that method.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gperceiver import io
from gperceiver.data import Genotypes
from gperceiver.io.vcf import write_vcf
from gperceiver.simulate import SimulationConfig, simulate

MAF_BINS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5]
ALL_METHODS = ["mode", "knn", "beagle", "gperceiver"]
# also "gperceiver-corrected" (needs --model): not part of the default list
ORDER = {"mode": 0, "knn": 1, "beagle": 2, "gperceiver": 3, "gperceiver-corrected": 3}


# -- data ------------------------------------------------------------------------------
def prepare(args) -> dict:
    """Simulate, hide genotypes and write the masked inputs (cached in the workdir)."""
    work = Path(args.workdir)
    meta_path = work / "data" / "meta.json"
    config = SimulationConfig(
        n_individuals=args.individuals,
        n_markers=args.markers,
        n_chromosomes=args.chromosomes,
        chromosome_length_bp=args.chromosome_length,
        population_size=args.ne,
        mutation_rate=args.mutation_rate,
        min_maf=args.min_maf,
        missing_rate=0.0,
        seed=args.seed,
    )
    settings = {
        "config": {
            k: getattr(config, k)
            for k in (
                "n_individuals",
                "n_markers",
                "n_chromosomes",
                "chromosome_length_bp",
                "recombination_rate",
                "mutation_rate",
                "population_size",
                "min_maf",
                "seed",
            )
        },
        "hidden_fraction": args.hidden,
    }
    if meta_path.exists() and json.loads(meta_path.read_text())["settings"] == settings:
        return json.loads(meta_path.read_text())
    data_dir = work / "data"
    for stale in (data_dir, work / "results"):  # other data: cached results are void
        if stale.exists():
            shutil.rmtree(stale)
    data_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    truth = simulate(config).genotypes
    seconds = time.perf_counter() - t0
    n, m = truth.n_individuals, truth.n_markers
    rng = np.random.default_rng([args.seed, 11])
    hidden = np.sort(rng.choice(n * m, size=round(args.hidden * n * m), replace=False))
    observed = truth.alleles.copy().reshape(n * m, -1)
    observed[hidden] = 0
    masked = Genotypes(
        observed.reshape(truth.alleles.shape), truth.names, truth.markers, 2
    )
    np.savez_compressed(data_dir / "truth.npz", alleles=truth.alleles, hidden=hidden)
    io.write_chroms(truth.markers, data_dir / "chroms.tsv")
    io.write_markers(masked, data_dir / "markers.tsv")
    t1 = time.perf_counter()
    write_vcf(masked, data_dir / "masked.vcf.gz")
    vcf_seconds = time.perf_counter() - t1
    meta = {
        "settings": settings,
        "simulate_seconds": seconds,
        "vcf_write_seconds": vcf_seconds,
        "ld": ld_decay(truth),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def load(workdir) -> tuple[Genotypes, Genotypes, np.ndarray]:
    """Truth, masked genotypes (from the written files) and hidden flat indices."""
    data_dir = Path(workdir) / "data"
    z = np.load(data_dir / "truth.npz")
    markers = io.read_chroms(data_dir / "chroms.tsv")
    masked = io.read_markers(data_dir / "markers.tsv", markers)
    truth = Genotypes(z["alleles"], masked.names, markers, 2)
    return truth, masked, z["hidden"]


def dosage(alleles: np.ndarray) -> np.ndarray:
    """Copies of allele 2, (N, M) int8; -1 where any copy is missing."""
    d = (alleles == 2).sum(-1).astype(np.int8)
    d[(alleles == 0).any(-1)] = -1
    return d


def ld_decay(truth: Genotypes, common: float = 0.05) -> list[dict]:
    """Mean r^2 of markers ``lag`` apart on chromosome 1 (all / MAF >= ``common``)."""
    d = dosage(truth.alleles).astype(np.float64)
    p = d.mean(0) / 2
    maf = np.minimum(p, 1 - p)
    sel = np.flatnonzero(truth.markers.chrom == 0)
    x = d[:, sel]
    x = (x - x.mean(0)) / x.std(0)
    pos, is_common = truth.markers.pos[sel], maf[sel] >= common
    rows = []
    for lag in (1, 5, 20, 50, 100, 250):
        r = (x[:, :-lag] * x[:, lag:]).mean(0)
        both = is_common[:-lag] & is_common[lag:]
        rows.append(
            {
                "lag": lag,
                "median_cM": float(np.median(pos[lag:] - pos[:-lag]) / 1e6),
                "r2_all": float((r**2).mean()),
                "r2_common": float((r[both] ** 2).mean()),
            }
        )
    return rows


# -- methods ---------------------------------------------------------------------------
def impute_mode(masked: Genotypes) -> np.ndarray:
    """Every missing genotype -> the marker's most frequent observed genotype."""
    d = dosage(masked.alleles)
    counts = np.stack([(d == g).sum(0) for g in range(3)])  # (3, M)
    mode = counts.argmax(0).astype(np.int8)
    return np.where(d < 0, mode[None, :], d)


def impute_knn(masked: Genotypes, k: int, chunk: int = 128) -> np.ndarray:
    """kNN: the rounded mean dosage of the ``k`` individuals sharing most alleles.

    Similarity is identity by state on markers observed in both individuals
    (shared allele copies / 2 x markers both observed), from one-hot matmuls.
    A missing genotype takes the mean over those neighbours observed there
    (the marker's mode when none is).
    """
    d = dosage(masked.alleles)
    n = len(d)
    onehot = [(d == g).astype(np.float32) for g in range(3)]
    obs = (d >= 0).astype(np.float32)
    shared = np.zeros((n, n), dtype=np.float64)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        same = sum(onehot[g][rows] @ onehot[g].T for g in range(3))
        off_by_one = (
            onehot[0][rows] @ onehot[1].T
            + onehot[1][rows] @ onehot[0].T
            + onehot[1][rows] @ onehot[2].T
            + onehot[2][rows] @ onehot[1].T
        )
        both = obs[rows] @ obs.T
        shared[rows] = (2 * same + off_by_one) / np.maximum(2 * both, 1)
    np.fill_diagonal(shared, -np.inf)
    neighbours = np.argsort(-shared, axis=1, kind="stable")[:, :k]  # (N, k)
    mode = impute_mode(masked)
    out = d.copy()
    dosage_f = np.where(d >= 0, d, 0).astype(np.float32)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        nb = neighbours[rows]  # (c, k)
        total = dosage_f[nb].sum(1)  # (c, M)
        count = obs[nb].sum(1)
        mean = np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
        guess = np.where(count > 0, np.rint(np.nan_to_num(mean)), mode[rows]).astype(
            np.int8
        )
        out[rows] = np.where(d[rows] < 0, guess, d[rows])
    return out


def read_vcf_dosage(
    path, marker_names: np.ndarray, sample_names: np.ndarray
) -> np.ndarray:
    """Allele-2 (ALT) dosage (N, M) int8 from the GT field of a biallelic VCF."""
    index = {name: j for j, name in enumerate(marker_names.tolist())}
    out = np.full((len(sample_names), len(marker_names)), -1, dtype=np.int8)
    code = {}
    with gzip.open(path, "rt") as handle:
        for line in handle:
            if line.startswith("##"):
                continue
            fields = line.rstrip("\n").split("\t")
            if line.startswith("#"):
                if fields[9:] != sample_names.tolist():
                    raise ValueError(f"{path}: samples differ from the input")
                continue
            gt_at = fields[8].split(":").index("GT")
            calls = [f.split(":")[gt_at] for f in fields[9:]]
            for c in set(calls) - code.keys():
                copies = c.replace("|", "/").split("/")
                code[c] = -1 if "." in copies else sum(int(a) > 0 for a in copies)
            out[:, index[fields[2]]] = [code[c] for c in calls]
    return out


def impute_beagle(
    masked: Genotypes, workdir: Path, label: str, extra: list[str], threads: int = 2
) -> tuple:
    """Run Beagle on the masked VCF; returns imputed dosages and the command."""
    # Beagle splits its arguments at spaces: keep them out of the output prefix
    prefix = workdir / "beagle" / re.sub(r"[^\w.=-]+", "_", label)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [
        "beagle",
        f"gt={workdir / 'data' / 'masked.vcf.gz'}",
        f"out={prefix}",
        f"nthreads={threads}",
        *extra,
    ]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    imputed = read_vcf_dosage(
        Path(f"{prefix}.vcf.gz"), masked.markers.names, masked.names
    )
    print(f"  parsed Beagle's VCF in {time.perf_counter() - t1:.1f} s", file=sys.stderr)
    return imputed, seconds, command


def impute_gperceiver(masked: Genotypes, workdir: Path, label: str, extra: list[str]):
    """``gperceiver impute`` one-shot (pretrain on the masked file, then impute)."""
    out_dir = workdir / label
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a model directory left over would be resumed
    out_dir.mkdir(parents=True)
    data = workdir / "data"
    exe = Path(sys.executable).with_name("gperceiver")
    command = [
        str(exe),
        "impute",
        str(data / "chroms.tsv"),
        str(data / "markers.tsv"),
        "--out",
        str(out_dir / "imputed.tsv"),
        *extra,
    ]
    t0 = time.perf_counter()
    with open(out_dir / "log.txt", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    imputed = io.read_markers(out_dir / "imputed.tsv", masked.markers)
    return dosage(imputed.alleles), seconds, command


def impute_corrected(masked: Genotypes, workdir: Path, label: str, model: str):
    """Calls of a pretrained model with its target-sampling prior divided out.

    Training draws targets with weight prod over copies of (1 - p)^s
    (``frequency_scaler`` s), so the decoder's genotype probabilities carry that
    prior; here each is divided by its weight before the argmax. Frequencies come
    from the masked file. Runs ``gperceiver impute --model`` with probabilities out.
    """
    import pandas as pd

    out_dir = workdir / label
    out_dir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    exe = Path(sys.executable).with_name("gperceiver")
    command = [
        str(exe), "impute", str(data / "chroms.tsv"), str(data / "markers.tsv"),
        "--model", model, "--output-format", "probabilities",
        "--out", str(out_dir / "probabilities.tsv"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    with open(out_dir / "log.txt", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    scaler = json.loads((Path(model) / "config.json").read_text())["masked"][
        "frequency_scaler"
    ]
    table = pd.read_csv(out_dir / "probabilities.tsv", sep="\t")
    rows = pd.Index(masked.names).get_indexer(table["name"])
    cols = pd.Index(masked.markers.names).get_indexer(table["marker"])
    probs = table[["1/1", "1/2", "2/2"]].to_numpy()
    log_w = scaler * np.log(np.clip(1 - masked.allele_frequencies(), 1e-6, None))
    prior = np.stack([2 * log_w[:, 0], log_w.sum(1), 2 * log_w[:, 1]], axis=1)
    calls = (np.log(np.maximum(probs, 1e-6)) - prior[cols]).argmax(1)
    imputed = dosage(masked.alleles)
    imputed[rows, cols] = calls
    return imputed, seconds, command


# -- scoring ---------------------------------------------------------------------------
def score(
    truth_d: np.ndarray, imputed: np.ndarray, hidden: np.ndarray, observed_d: np.ndarray
) -> dict:
    """Concordance and allelic r^2 overall and per MAF bin, on the hidden entries.

    r^2 is the squared correlation of true and imputed dosage after centring both
    at the marker's mean observed dosage: pooled over many markers, a plain
    correlation would credit a method for knowing marker means (the mode baseline
    would get r^2 = 0.19 overall while 0 in every MAF bin).
    """
    m = truth_d.shape[1]
    p = truth_d.mean(0) / 2
    maf = np.minimum(p, 1 - p)
    counted = np.where(observed_d >= 0, observed_d, 0).sum(0)
    centre = counted / np.maximum((observed_d >= 0).sum(0), 1)  # (M,)
    entry_centre = centre[hidden % m]
    t = truth_d.ravel()[hidden].astype(np.float64)
    g = imputed.ravel()[hidden].astype(np.float64)
    if (g < 0).any():
        raise ValueError(f"{int((g < 0).sum())} hidden genotypes were left missing")
    entry_maf = maf[hidden % m]
    out = {}
    bins = [("all", np.ones(len(t), bool))] + [
        (f"{lo:g}-{hi:g}", (entry_maf >= lo) & (entry_maf < hi if hi < 0.5 else True))
        for lo, hi in zip(MAF_BINS[:-1], MAF_BINS[1:], strict=True)
    ]
    for name, sel in bins:
        tt, gg = t[sel], g[sel]
        dt, dg = tt - entry_centre[sel], gg - entry_centre[sel]
        r = np.corrcoef(dt, dg)[0, 1] if dt.std() > 0 and dg.std() > 0 else 0.0
        out[name] = {
            "n": int(sel.sum()),
            "concordance": float((tt == gg).mean()),
            "r2": float(r**2),
        }
    return out


def table(
    workdir: Path, truth: Genotypes, masked: Genotypes, hidden: np.ndarray
) -> str:
    truth_d, observed_d = dosage(truth.alleles), dosage(masked.alleles)
    results = []
    for path in sorted((workdir / "results").glob("*.npz")):
        z = np.load(path, allow_pickle=False)
        info = json.loads(str(z["info"]))
        results.append((info, score(truth_d, z["imputed"], hidden, observed_d)))
    results.sort(key=lambda r: (ORDER.get(r[0]["method"], 9), r[0]["seconds"]))
    if not results:
        return "(no results yet)"
    bins = list(results[0][1])
    counts = " / ".join(f"{b}: {results[0][1][b]['n']:,}" for b in bins)
    head = ["method", "wall time", "CPU time", "load", "concordance", "r²"] + [
        f"conc. / r² MAF {b}" for b in bins[1:]
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for info, s in results:
        cpu = info.get("cpu_seconds")
        load = (info.get("load_before"), info["load_after"])
        cells = [
            info["label"],
            fmt_time(info["seconds"]),
            "" if cpu is None else fmt_time(cpu),
            " → ".join(f"{v:.1f}" for v in load if v is not None),
            f"{s['all']['concordance']:.4f}",
            f"{s['all']['r2']:.4f}",
        ]
        cells += [f"{s[b]['concordance']:.3f} / {s[b]['r2']:.3f}" for b in bins[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Hidden genotypes per MAF bin: {counts}.")
    lines.append("")
    lines.append("Commands (wall time is this command's, from start to exit):")
    lines.append("")
    for info, _ in results:
        lines.append(f"- {info['label']}: `{info['command']}`")
    return "\n".join(lines)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (s)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def fmt_time(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    free = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.split(
        "\n"
    )[1]
    return (
        f"{os.cpu_count()} cores ({cpu}), memory {free.split()[1]} GB total; "
        f"load average at the end {os.getloadavg()[0]:.2f}; "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    )


# -- main ------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", default=str(Path(tempfile.gettempdir()) / "gperceiver-imputation")
    )
    parser.add_argument(
        "--methods",
        default=",".join(ALL_METHODS),
        help=f"comma-separated of {ALL_METHODS}, or 'none'",
    )
    parser.add_argument("--label", help="result name (default: the method)")
    parser.add_argument("--individuals", type=int, default=1000)
    parser.add_argument("--markers", type=int, default=20_000)
    parser.add_argument("--chromosomes", type=int, default=4)
    parser.add_argument("--chromosome-length", type=int, default=100_000_000, help="bp")
    parser.add_argument("--ne", type=int, default=100, help="msprime population size")
    parser.add_argument(
        "--mutation-rate",
        type=float,
        default=5e-8,
        help="per bp; only sets how many sites there are to pick from",
    )
    parser.add_argument("--min-maf", type=float, default=0.01)
    parser.add_argument(
        "--hidden", type=float, default=0.1, help="share of genotypes hidden"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--knn-k", type=int, default=10)
    parser.add_argument(
        "--model", help="pretrained model directory for gperceiver-corrected"
    )
    parser.add_argument("--beagle-args", default="", help="extra key=value arguments")
    parser.add_argument("--beagle-threads", type=int, default=2, help="nthreads=")
    parser.add_argument(
        "--gperceiver-args",
        default="",
        help='extra impute options; write --gperceiver-args="--epochs 3" (with =)',
    )
    args = parser.parse_args()

    work = Path(args.workdir)
    meta = prepare(args)
    print(f"data: {json.dumps(meta['settings'])}", file=sys.stderr)
    truth, masked, hidden = load(work)
    (work / "results").mkdir(exist_ok=True)
    methods = [] if args.methods == "none" else args.methods.split(",")
    for method in methods:
        label = args.label or method
        print(f"running {label} ...", file=sys.stderr)
        cpu_before = cpu_seconds()
        load_before = os.getloadavg()[0]
        if method == "mode":
            t0 = time.perf_counter()
            imputed = impute_mode(masked)
            seconds, command = time.perf_counter() - t0, "numpy, in-process"
        elif method == "knn":
            t0 = time.perf_counter()
            imputed = impute_knn(masked, args.knn_k)
            seconds = time.perf_counter() - t0
            command = f"numpy, in-process, k={args.knn_k}"
        elif method == "beagle":
            imputed, seconds, cmd = impute_beagle(
                masked, work, label, shlex.split(args.beagle_args), args.beagle_threads
            )
            command = shlex.join(cmd)
        elif method == "gperceiver":
            imputed, seconds, cmd = impute_gperceiver(
                masked, work, label, shlex.split(args.gperceiver_args)
            )
            command = shlex.join(cmd)
        elif method == "gperceiver-corrected":
            if not args.model:
                raise SystemExit("gperceiver-corrected needs --model DIR")
            imputed, seconds, cmd = impute_corrected(masked, work, label, args.model)
            command = shlex.join(cmd) + " + prior correction"
        else:
            raise SystemExit(f"unknown method {method!r}")
        info = {
            "method": method,
            "label": label,
            "seconds": seconds,
            "command": command,
            "cpu_seconds": cpu_seconds() - cpu_before,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
        }
        np.savez_compressed(
            work / "results" / f"{label}.npz", imputed=imputed, info=json.dumps(info)
        )
        print(
            f"  {label}: {seconds:.1f} s (load {info['load_after']:.2f})",
            file=sys.stderr,
        )

    ld = "; ".join(f"{r['median_cM']:.2f} cM: {r['r2_common']:.2f}" for r in meta["ld"])
    print(f"Mean r² between common (MAF >= 0.05) SNPs on chr1 by distance: {ld}.")
    print(f"Machine: {machine()}.")
    print()
    print(table(work, truth, masked, hidden))


if __name__ == "__main__":
    main()
