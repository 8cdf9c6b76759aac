"""Imputation on a public human panel: the example data of Debian's
``bio-eagle-examples`` (379 1000 Genomes EUR individuals x 2,000 SNPs, 1,813 on
chromosome 21 and 187 on 22; ``EUR_test.vcf.gz``, phase discarded), 10 % of the
called genotypes hidden (seeded).

gperceiver reads a chroms table whose positions are the physical map in **Mb**
(bp / 10^6, written with every decimal) and the masked markers table; Beagle 5
reads the same masked genotypes as a VCF (the package's own lines, the hidden
calls set to ``./.``) with the package's genetic map (``EUR_test.bim.gz``, cM)
as ``map=``. kNN (k = 10) and the per-marker mode are imputation.py's. Scored on
exactly the hidden entries with imputation.py's concordance and allelic r^2 by
MAF bin::

    apt-get install bio-eagle-examples
    python benchmarks/public_imputation.py --workdir /tmp/eur --methods mode,knn
    python benchmarks/public_imputation.py --workdir /tmp/eur --methods gperceiver
    python benchmarks/public_imputation.py --workdir /tmp/eur --methods beagle

Results are cached in ``WORKDIR/results/<label>.npz`` as in imputation.py.
"""

from __future__ import annotations

import argparse
import gzip
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
from gperceiver.data import MISSING, Genotypes, MarkerMap  # noqa: E402
from gperceiver.io.vcf import read_vcf  # noqa: E402

EXAMPLES = Path("/usr/share/doc/bio-eagle/examples")


def prepare(work: Path, examples: Path, share: float, seed: int) -> dict:
    """Truth, masked tables (Mb map), masked VCF and Beagle's map, in ``work/data``."""
    data = work / "data"
    meta_path = data / "meta.json"
    settings = {"examples": str(examples), "hidden": share, "seed": seed}
    if meta_path.exists() and json.loads(meta_path.read_text()) == settings:
        return settings
    data.mkdir(parents=True, exist_ok=True)
    vcf = examples / "EUR_test.vcf.gz"
    if not vcf.exists():
        raise SystemExit(f"{vcf}: not found; apt-get install bio-eagle-examples")
    truth = read_vcf(vcf)
    called = (truth.alleles != MISSING).all(-1)
    rng = np.random.default_rng([seed, 3])
    hidden = (rng.random(called.shape) < share) & called
    alleles = truth.alleles.copy()
    alleles[hidden] = MISSING
    mb = MarkerMap(
        truth.markers.names,
        truth.markers.chrom,
        truth.markers.pos / 1e6,
        truth.markers.chrom_names,
    )
    masked = Genotypes(alleles, truth.names, mb, truth.n_alleles)
    io.write_chroms(mb, data / "chroms.tsv")
    io.write_markers(masked, data / "markers.tsv")
    np.savez_compressed(data / "truth.npz", alleles=truth.alleles, hidden=hidden)
    column = {name: j for j, name in enumerate(truth.markers.names.tolist())}
    with gzip.open(vcf, "rt") as src, gzip.open(data / "masked.vcf.gz", "wt") as dst:
        for line in src:
            if line.startswith("#"):
                dst.write(line)
                continue
            fields = line.rstrip("\n").split("\t")
            gts = np.array(fields[9:], dtype=object)
            gts[hidden[:, column[fields[2]]]] = "./."
            dst.write("\t".join(fields[:9] + gts.tolist()) + "\n")
    with gzip.open(examples / "EUR_test.bim.gz", "rt") as bim:
        rows = [line.split() for line in bim]
    (data / "beagle.map").write_text(
        "".join(f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\n" for r in rows)
    )
    meta_path.write_text(json.dumps(settings))
    return settings


def run(method: str, work: Path, masked: Genotypes, extra: list[str]):
    """Dosages ``(N, M)`` of one method, its wall seconds and command."""
    data = work / "data"
    t0 = time.perf_counter()
    if method == "mode":
        return bench.impute_mode(masked), time.perf_counter() - t0, "numpy"
    if method == "knn":
        return bench.impute_knn(masked, 10), time.perf_counter() - t0, "numpy, k=10"
    out = work / method
    out.mkdir(exist_ok=True)
    if method == "gperceiver":
        exe = Path(sys.executable).with_name("gperceiver")
        command = [str(exe), "impute", str(data / "chroms.tsv")]
        command += [str(data / "markers.tsv"), "--out", str(out / "imputed.tsv")]
    elif method == "beagle":
        command = ["beagle", f"gt={data / 'masked.vcf.gz'}", f"out={out / 'beagle'}"]
        command += [f"map={data / 'beagle.map'}", "nthreads=1"]
    else:
        raise SystemExit(f"unknown method {method!r}")
    command += extra
    with open(out / "log.txt", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if method == "gperceiver":
        fit = [x for x in (out / "log.txt").read_text().splitlines() if "fitted" in x]
        print("  " + " ".join(extra) + ": " + " ".join(fit), file=sys.stderr)
        got = io.read_markers(out / "imputed.tsv", masked.markers)
        return bench.dosage(got.alleles), seconds, shlex.join(command)
    names = masked.markers.names
    dose = bench.read_vcf_dosage(out / "beagle.vcf.gz", names, masked.names)
    return dose, seconds, shlex.join(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/gperceiver-eur")
    parser.add_argument("--examples", default=str(EXAMPLES))
    parser.add_argument("--methods", default="mode,knn,gperceiver,beagle")
    parser.add_argument("--label", help="result name (default: the method)")
    parser.add_argument("--extra-args", default="", help="extra arguments, one method")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(args.workdir)
    prepare(work, Path(args.examples), 0.1, args.seed)
    markers = io.read_chroms(work / "data" / "chroms.tsv")
    masked = io.read_markers(work / "data" / "markers.tsv", markers)
    z = np.load(work / "data" / "truth.npz")
    hidden = np.flatnonzero(z["hidden"].ravel())
    (work / "results").mkdir(exist_ok=True)
    for method in [m for m in args.methods.split(",") if m and m != "none"]:
        label = args.label or method
        load_before, cpu_before = os.getloadavg()[0], bench.cpu_seconds()
        imputed, seconds, command = run(
            method, work, masked, shlex.split(args.extra_args)
        )
        info = {
            "method": method,
            "label": label,
            "seconds": seconds,
            "command": command,
            "cpu_seconds": bench.cpu_seconds() - cpu_before,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
        }
        np.savez_compressed(
            work / "results" / f"{label}.npz", imputed=imputed, info=json.dumps(info)
        )
        print(f"  {label}: {seconds:.1f} s", file=sys.stderr)
    truth = Genotypes(z["alleles"], masked.names, markers, 2)
    print(f"Machine: {bench.machine()}.")
    print(bench.table(work, truth, masked, hidden))


if __name__ == "__main__":
    main()
