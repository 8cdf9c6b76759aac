"""Multi-environment baselines at scale: leave-one-environment-out (cv0) per fold.

Simulates a weather-driven multi-environment trial (as ``environments.py``) at the
size of a maize hybrid trial: 1,800 individuals x 10,000 SNPs, 24 environments
with daily weather, and keeps ~450 random individuals per environment, so the
individuals x environments grid is incomplete (~10,800 records). Then times
``evaluate --scheme cv0``'s methods fold by fold (the first ``--folds`` held-out
environments) and reports each fold's wall time and within-environment r.

    python benchmarks/environments_scale.py --data /tmp/envscale --folds 2

``--data`` keeps the simulated tables (written on the first run, read after).
Writes ``--table`` (default ``folds.tsv``: method, held-out block, wall and CPU
seconds, r)
and ``predictions-<table>`` under ``--data``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gperceiver import io
from gperceiver.baselines import Kernel
from gperceiver.data import Phenotypes
from gperceiver.evaluate import METHODS, pearson, splits
from gperceiver.simulate import SimulationConfig, simulate

# The Perceiver of environments.py, with a short epoch budget: its cost per fold
# is what is measured here, not its accuracy.
PERCEIVER = {
    "width": 32,
    "n_latents": 16,
    "encode_iters": 1,
    "self_layers": 1,
    "lr": 3e-4,
    "epochs": 2,
    "val_fraction": 0.0,
    "checkpoint_attention": False,
}


def incomplete_grid(phenotypes: Phenotypes, per_environment: int, seed: int):
    """``per_environment`` random individuals' records in each block."""
    rng = np.random.default_rng([seed, 7])
    table = phenotypes.table
    keep = []
    for _, rows in table.groupby("block").indices.items():
        keep.append(
            rng.choice(rows, size=min(per_environment, len(rows)), replace=False)
        )
    kept = table.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True)
    return Phenotypes(kept, source="simulation")


def load_or_simulate(args) -> tuple:
    """``(genotypes, phenotypes, covariates)``: read from ``--data`` if written."""
    data = Path(args.data)
    files = {k: data / f"{k}.tsv" for k in ("chroms", "markers", "phenotypes")}
    files["covariates"] = data / "covariates.tsv"
    if not all(f.exists() for f in files.values()):
        start = time.perf_counter()
        config = SimulationConfig(
            n_individuals=args.individuals,
            n_markers=args.markers,
            n_chromosomes=10,
            chromosome_length_bp=50_000_000,
            n_qtl=300,
            n_environments=args.environments,
            gxe_correlation=0.5,
            heritability=0.5,
            dominance_variance=0.0,
            epistasis_variance=0.0,
            weather_days=120,
            seed=args.seed,
        )
        sim = simulate(config)
        phenotypes = incomplete_grid(sim.phenotypes, args.per_environment, args.seed)
        data.mkdir(parents=True, exist_ok=True)
        io.write_chroms(sim.genotypes.markers, files["chroms"])
        io.write_markers(sim.genotypes, files["markers"])
        io.write_phenotypes(phenotypes, files["phenotypes"])
        io.write_covariates(sim.covariates, files["covariates"])
        print(f"simulated in {time.perf_counter() - start:.0f} s", flush=True)
    markers = io.read_chroms(files["chroms"])
    genotypes = io.read_markers(files["markers"], markers)
    phenotypes = io.read_phenotypes(files["phenotypes"])
    return genotypes, phenotypes, io.read_covariates(files["covariates"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--individuals", type=int, default=1800)
    parser.add_argument("--markers", type=int, default=10000)
    parser.add_argument("--environments", type=int, default=24)
    parser.add_argument("--per-environment", type=int, default=450)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--methods", default="gblup-main,gblup-rn")
    parser.add_argument("--folds", type=int, default=2, help="held-out blocks timed")
    parser.add_argument(
        "--skip-folds", type=int, default=0, help="start after this many blocks"
    )
    parser.add_argument(
        "--keep-environments",
        type=int,
        default=None,
        help="use only the records of the first K environments (old-vs-new checks)",
    )
    parser.add_argument("--params", default=json.dumps(PERCEIVER))
    parser.add_argument("--table", default="folds.tsv", help="written under --data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    genotypes, phenotypes, covariates = load_or_simulate(args)
    if args.keep_environments:
        kept = phenotypes.table["block"] < args.keep_environments
        phenotypes = Phenotypes(phenotypes.table[kept].reset_index(drop=True))
    table = phenotypes.table.assign(cv=phenotypes.table["block"].astype(str))
    print(
        f"{genotypes.n_individuals} individuals x {genotypes.n_markers} markers, "
        f"{len(table)} records in {table['block'].nunique()} environments",
        flush=True,
    )
    cache = {
        "covariates": covariates,
        "scheme": "cv0",
        "params": json.loads(args.params),
        "typed": {"progress": False},
        "workdir": Path(args.data) / "models",
        "resume": False,
    }
    start = time.perf_counter()
    cache["relationship"] = Kernel.relationship(genotypes)  # once per data set
    print(f"relationship matrix {time.perf_counter() - start:.1f} s", flush=True)
    rows, predictions = [], []
    plan = list(splits(phenotypes, "cv0"))[args.skip_folds :][: args.folds]
    for method in args.methods.split(","):
        for label, is_train, is_val in plan:
            train, validation = table[is_train], table[is_val]
            cache["method"], cache["split"] = method, label
            start, cpu = time.perf_counter(), time.process_time()
            prediction = METHODS[method](train, validation, genotypes, cache)
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu
            if isinstance(prediction, tuple):
                prediction = prediction[0] + prediction[1]
            r = pearson(np.asarray(prediction), validation["response"].to_numpy())
            row = {"method": method, "fold": label, "seconds": seconds, "cpu": cpu}
            rows.append({**row, "r": r})
            predictions.append(
                validation[["name", "block"]].assign(
                    method=method, prediction=prediction
                )
            )
            print(
                f"{method:12s} {label:9s} {seconds:8.1f} s (CPU {cpu:.1f} s)",
                f"r {r:.3f}",
                flush=True,
            )
    if not rows:
        return
    frame = pd.DataFrame(rows)
    io.write_table(frame, Path(args.data) / args.table)
    io.write_table(
        pd.concat(predictions), Path(args.data) / f"predictions-{args.table}", "%.9g"
    )
    print(frame.groupby("method")[["seconds", "cpu", "r"]].mean().round(3).to_string())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.2f} GiB, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
