"""Finetuning with panel attention (issue 16, item 5): does feeding each
individual's panel copy (genotypes copied from the training fold's other
individuals) into the Perceiver's tokens change cross-validated accuracy?

Two arms on the same folds, one cross-validation (``evaluate``'s
:func:`~gperceiver.evaluate.cross_validate`) per seed:

- ``base``: ``gblup,rkhs,perceiver`` (GBLUP and RKHS do not depend on the seed);
- ``panel``: ``perceiver`` with ``{"panel": true}``.

Data: ``wheat`` (the embedded 599 lines and their 10 published folds) or a
``gperceiver simulate`` directory (``--simulate DIR`` writes one first, 600 x
2,000 msprime markers, 10 folds). Each run appends its pooled mean r per method,
wall and CPU seconds and the load to ``--results`` (TSV)::

    OMP_NUM_THREADS=1 python benchmarks/finetune_panel.py --data wheat \\
        --arms base,panel --seeds 0,1,2 --results panel-ft.tsv
    python benchmarks/finetune_panel.py --summary --results panel-ft.tsv
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from gperceiver.evaluate import cross_validate, pooled_table
from gperceiver.io import match_phenotypes, read_chroms, read_markers, read_phenotypes
from gperceiver.simulate import SimulationConfig, simulate, write_simulation

WHEAT = Path(__file__).resolve().parents[1] / "src/gperceiver/datasets/wheat"
ARMS = {
    "base": ("gblup,rkhs,perceiver", {}),
    "panel": ("perceiver", {"panel": True}),
}


def load(directory: Path):
    """Genotypes and phenotypes of a directory holding chroms, markers and
    phenotypes TSVs (as ``gperceiver simulate`` writes them)."""
    markers = read_chroms(directory / "chroms.tsv")
    genotypes = read_markers(directory / "markers.tsv", markers)
    phenotypes = read_phenotypes(directory / "phenotypes.tsv")
    return genotypes, match_phenotypes(phenotypes, genotypes)


def run(data, arm: str, seed: int, label: str, workdir: Path, results: Path):
    """One cross-validation of ``arm`` with ``seed``; prints and appends it."""
    genotypes, phenotypes = data
    methods, extra = ARMS[arm]
    params = {"progress": False, "seed": seed, **extra}
    options = {"params": params, "typed": {}, "workdir": str(workdir)}
    started, cpu = time.perf_counter(), time.process_time()
    _, accuracy = cross_validate(
        phenotypes, genotypes, methods.split(","), progress=False, options=options
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    pooled = pooled_table(accuracy)
    print(f"{label} {arm} seed {seed}: {seconds:.0f} s, {cpu:.0f} s CPU")
    print(pooled.round(4).to_string(), flush=True)
    rows = pooled.reset_index().assign(
        data=label,
        arm=arm,
        seed=seed,
        params=json.dumps(params),
        seconds=round(seconds),
        cpu_seconds=round(cpu),
        load=round(os.getloadavg()[0], 1),
    )
    rows.to_csv(results, sep="\t", index=False, mode="a", header=not results.exists())


def summary(results: Path) -> None:
    """Mean r per data set, method (the panel arm's perceiver as
    ``perceiver+panel``) and seed, then the mean and sd over seeds."""
    frame = pd.read_csv(results, sep="\t")
    frame["method"] = frame["method"].where(frame["arm"] == "base", "perceiver+panel")
    table = frame.pivot_table("mean", ["data", "method"], "seed")
    table["mean"], table["sd"] = table.mean(axis=1), table.std(axis=1, ddof=1)
    print(table.round(4).to_string())
    print(frame.pivot_table(["cpu_seconds", "load"], ["data", "arm"], "seed"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="wheat", help="wheat, or a directory")
    parser.add_argument("--simulate", action="store_true", help="write --data first")
    parser.add_argument("--arms", default="base,panel")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default=None, help="keep models here")
    parser.add_argument("--results", default="finetune-panel.tsv")
    parser.add_argument("--summary", action="store_true", help="print --results")
    args = parser.parse_args()
    if args.summary:
        summary(Path(args.results))
        return
    if args.data == "wheat":
        directory, label = WHEAT, "wheat"
    else:
        directory, label = Path(args.data), Path(args.data).name
    if args.simulate:
        config = SimulationConfig(n_individuals=600, n_markers=2000, n_folds=10, seed=1)
        write_simulation(simulate(config), directory)
    data = load(directory)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="panel-ft-"))
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms.split(","):
            here = workdir / label / arm / f"seed-{seed}"
            run(data, arm, seed, label, here, Path(args.results))


if __name__ == "__main__":
    main()
