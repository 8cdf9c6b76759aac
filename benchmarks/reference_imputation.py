"""Reference-panel imputation benchmark: ``gperceiver impute --reference`` vs Beagle's
``ref=`` and the panel's per-marker mode, on the msprime set of imputation.py.

The first ``--panel`` individuals of the simulated truth (every marker, complete)
are the reference panel; the others are targets typed at a random ``--typed``
share of the markers (the same markers for every target, as on a chip). Scored on
the targets' untyped markers: concordance and allelic r^2 by MAF bin (imputation.py's
definitions, centred at the panel's mean dosage).

Beagle needs a phased reference: it phases the panel first (``beagle gt=panel``)
and then imputes (``beagle ref=phased gt=targets``); both steps are timed and
reported (the panel stays unphased for gperceiver). Run imputation.py once first
to simulate the data::

    python benchmarks/imputation.py --workdir /tmp/bench --methods mode
    python benchmarks/reference_imputation.py --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import imputation as bench  # noqa: E402

from gperceiver import io  # noqa: E402
from gperceiver.data import Genotypes  # noqa: E402
from gperceiver.io.vcf import write_vcf  # noqa: E402


def prepare(work: Path, n_panel: int, typed_share: float, seed: int):
    """Panel / target VCFs of the cached truth; returns truth, typed markers."""
    truth, masked, _ = bench.load(work)
    out = work / f"ref-{n_panel}-{typed_share:g}"
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng([seed, 23])
    m = truth.n_markers
    typed = np.sort(rng.choice(m, round(typed_share * m), replace=False))
    panel = truth.subset(individuals=np.arange(n_panel))
    targets = truth.subset(individuals=np.arange(n_panel, truth.n_individuals))
    if not (out / "targets.vcf.gz").exists():
        write_vcf(panel, out / "panel.vcf.gz")
        write_vcf(targets.subset(markers=typed), out / "targets.vcf.gz")
        np.save(out / "typed.npy", typed)
    return panel, targets, typed, out


def run_gperceiver(out: Path, targets: Genotypes, extra: list[str]):
    exe = Path(sys.executable).with_name("gperceiver")
    command = [
        str(exe), "impute", str(out / "targets.vcf.gz"), "--reference",
        str(out / "panel.vcf.gz"), "--out", str(out / "gperceiver.tsv"), *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    with open(out / "gperceiver.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    got = io.read_markers(out / "gperceiver.tsv", targets.markers)
    return bench.dosage(got.alleles), {"total": seconds}, shlex.join(command)


def run_beagle(out: Path, targets: Genotypes, extra: list[str], threads: int = 2):
    phase = ["beagle", f"gt={out / 'panel.vcf.gz'}", f"out={out / 'panel.phased'}"]
    phase += [f"nthreads={threads}", *extra]
    impute = ["beagle", f"ref={out / 'panel.phased.vcf.gz'}"]
    impute += [f"gt={out / 'targets.vcf.gz'}", f"out={out / 'beagle'}"]
    impute += [f"nthreads={threads}"]
    seconds = {}
    for name, command in (("phase panel", phase), ("impute", impute)):
        t0 = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds[name] = time.perf_counter() - t0
    seconds["total"] = sum(seconds.values())
    imputed = bench.read_vcf_dosage(
        out / "beagle.vcf.gz", targets.markers.names, targets.names
    )
    return imputed, seconds, shlex.join(phase) + " && " + shlex.join(impute)


def run_mode(panel: Genotypes, targets: Genotypes):
    t0 = time.perf_counter()
    d = bench.dosage(panel.alleles)
    counts = np.stack([(d == g).sum(0) for g in range(3)])
    mode = counts.argmax(0).astype(np.int8)
    imputed = np.broadcast_to(mode, (targets.n_individuals, len(mode))).copy()
    return imputed, {"total": time.perf_counter() - t0}, "numpy, in-process"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="/tmp/bench")
    parser.add_argument("--panel", type=int, default=800)
    parser.add_argument("--typed", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--methods", default="mode,gperceiver,beagle")
    parser.add_argument("--gperceiver-args", default="")
    parser.add_argument("--beagle-args", default="")
    parser.add_argument("--beagle-threads", type=int, default=2, help="nthreads=")
    parser.add_argument("--label", help="result name (default: the method)")
    args = parser.parse_args()
    work = Path(args.workdir)
    panel, targets, typed, out = prepare(work, args.panel, args.typed, args.seed)
    untyped = np.setdiff1d(np.arange(targets.n_markers), typed)
    n_t = targets.n_individuals
    flat = (np.arange(n_t)[:, None] * targets.n_markers + untyped[None]).ravel()
    truth_d, panel_d = bench.dosage(targets.alleles), bench.dosage(panel.alleles)
    results = json.loads((out / "results.json").read_text()) if (
        out / "results.json"
    ).exists() else {}  # fmt: skip
    for method in [m for m in args.methods.split(",") if m]:
        print(f"running {method} (load {os.getloadavg()[0]:.2f}) ...", file=sys.stderr)
        load_before, cpu_before = os.getloadavg()[0], bench.cpu_seconds()
        if method == "gperceiver":
            imputed, seconds, cmd = run_gperceiver(
                out, targets, shlex.split(args.gperceiver_args)
            )
        elif method == "beagle":
            imputed, seconds, cmd = run_beagle(
                out, targets, shlex.split(args.beagle_args), args.beagle_threads
            )
        elif method == "mode":
            imputed, seconds, cmd = run_mode(panel, targets)
        else:
            raise SystemExit(f"unknown method {method!r}")
        seconds["cpu"] = bench.cpu_seconds() - cpu_before
        scores = bench.score(truth_d, imputed, flat, panel_d)
        results[args.label or method] = {
            "seconds": seconds,
            "command": cmd,
            "load": [load_before, os.getloadavg()[0]],
            "scores": scores,
        }
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"  {method}: {seconds} {scores['all']}", file=sys.stderr)
    print(f"Machine: {bench.machine()}.")
    print(table(results))


def table(results: dict) -> str:
    if not results:
        return "(no results)"
    bins = list(next(iter(results.values()))["scores"])
    head = ["method", "wall time", "CPU time", "concordance", "r²"] + [
        f"conc. / r² MAF {b}" for b in bins[1:]
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        s, t = r["scores"], r["seconds"]
        parts = [
            f"{k} {bench.fmt_time(v)}"
            for k, v in t.items()
            if k not in ("total", "cpu")
        ]
        time_cell = bench.fmt_time(t["total"]) + (
            f" ({', '.join(parts)})" if parts else ""
        )
        cells = [
            name,
            time_cell,
            bench.fmt_time(t.get("cpu", float("nan"))),
            f"{s['all']['concordance']:.4f}",
            f"{s['all']['r2']:.4f}",
        ]
        cells += [f"{s[b]['concordance']:.3f} / {s[b]['r2']:.3f}" for b in bins[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Scored entries per MAF bin: "
        + " / ".join(
            f"{b}: {next(iter(results.values()))['scores'][b]['n']:,}" for b in bins
        )
    )
    lines += [""] + [
        f"- {k}: `{r['command']}` (load {r['load'][0]:.1f} -> {r['load'][1]:.1f})"
        for k, r in results.items()
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
