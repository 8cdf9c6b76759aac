"""Fixed effects: GBLUP, RKHS and the Perceiver with and without ``--fixed`` on a
simulated set with a sex factor and an age covariate (``--fixed-variance``).

Every method is cross-validated on the same folds of one simulated set; the
neural methods (``--neural``, default the Perceiver; ``perceiver,perceiver-pretrained``
for both) once per seed (GBLUP and RKHS are deterministic: once). Accuracy is
Pearson r pooled over folds: of the prediction with the response, of the genetic
part (``prediction - fixed``) with the response corrected for the fitted fixed
effects (``pearson_r_genetic``), and of the genetic part with the simulated
genetic value::

    for arm in plain fixed; do for seed in 0 1 2; do
        python benchmarks/fixed_effects.py --out /tmp/fixed --arm $arm --seeds $seed \
            --neural perceiver,perceiver-pretrained --params '{"time_budget_s": 30}'
    done; done
    python benchmarks/fixed_effects.py --out /tmp/fixed --summary   # the table

Each run appends its rows to ``OUT/runs.tsv``; GBLUP and RKHS run with seed 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gperceiver.baselines import FixedEffects
from gperceiver.evaluate import POOLED, cross_validate
from gperceiver.simulate import SimulationConfig, simulate

ARMS = {
    "plain": ("no", FixedEffects((), ())),
    "fixed": ("sex, age", FixedEffects(("sex",), ("age",))),
}


def _run(data, methods, fixed, params, typed, workdir):
    options = {"params": params, "typed": typed, "fixed": fixed, "workdir": workdir}
    started = time.perf_counter()
    predictions, accuracy = cross_validate(
        data.phenotypes, data.genotypes, methods, progress=False, options=options
    )
    return predictions, accuracy, time.perf_counter() - started


def _rows(predictions, accuracy, truth, arm, seed, seconds):
    merged = predictions.join(truth[["genetic"]], on=["name", "block"])
    pooled = accuracy[accuracy["fold"] == POOLED].groupby("method", sort=False)
    out = []
    for method, part in merged.groupby("method", sort=False):
        fixed = part["fixed"].fillna(0.0)
        genetic = part["prediction"] - fixed
        scores = pooled.get_group(method)
        out.append(
            {
                "method": method,
                "fixed": arm,
                "seed": seed,
                "pearson_r": scores["pearson_r"].mean(),
                "pearson_r_genetic": scores["pearson_r_genetic"].mean(),
                "r_true_genetic": np.corrcoef(genetic, part["genetic"])[0, 1],
                "seconds": seconds,
            }
        )
    return out


def summarise(out: Path) -> None:
    """``summary.tsv``: mean (and sd over seeds) of each method and arm."""
    table = pd.read_csv(out / "runs.tsv", sep="\t")
    summary = table.groupby(["method", "fixed"], sort=False).agg(
        pearson_r=("pearson_r", "mean"),
        pearson_r_sd=("pearson_r", "std"),
        pearson_r_genetic=("pearson_r_genetic", "mean"),
        r_true_genetic=("r_true_genetic", "mean"),
        r_true_genetic_sd=("r_true_genetic", "std"),
        runs=("seed", "size"),
        seconds=("seconds", "mean"),
    )
    summary.to_csv(out / "summary.tsv", sep="\t")
    print(summary.round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--arm", choices=list(ARMS), default="plain")
    parser.add_argument("--summary", action="store_true", help="only tabulate")
    parser.add_argument("--individuals", type=int, default=500)
    parser.add_argument("--markers", type=int, default=1000)
    parser.add_argument("--environments", type=int, default=1)
    parser.add_argument("--fixed-variance", type=float, default=0.3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", default="0", help="Perceiver seeds")
    parser.add_argument("--neural", default="perceiver", help="comma-separated")
    parser.add_argument("--params", default="{}", help="JSON of Perceiver options")
    parser.add_argument("--data-seed", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out)
    if args.summary:
        return summarise(out)

    config = SimulationConfig(
        n_individuals=args.individuals,
        n_markers=args.markers,
        n_environments=args.environments,
        fixed_variance=args.fixed_variance,
        n_folds=args.folds,
        seed=args.data_seed,
    )
    data = simulate(config)
    truth = data.truth.set_index(["name", "block"])
    out.mkdir(parents=True, exist_ok=True)
    params = {"progress": False, **json.loads(args.params)}
    neural = [m for m in args.neural.split(",") if m]
    arm, fixed = ARMS[args.arm]
    for seed in (int(s) for s in args.seeds.split(",")):
        methods = (["gblup", "rkhs"] if seed == 0 else []) + neural
        workdir = out / f"{args.arm}-seed{seed}"
        result = _run(data, methods, fixed, params, {"seed": seed}, workdir)
        rows = pd.DataFrame(_rows(*result[:2], truth, arm, seed, result[2]))
        runs = out / "runs.tsv"
        rows.to_csv(runs, sep="\t", index=False, mode="a", header=not runs.exists())
        print(rows.to_string(index=False))


if __name__ == "__main__":
    main()
