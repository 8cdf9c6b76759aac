"""In-context prediction (issue 22): the ``relatives`` method beside GBLUP and
RKHS on the same folds, on wheat and on simulated traits with known truth.

Data sets: ``wheat`` (599 lines, 4 environments, the 10 published folds) and
two msprime simulations (600 individuals x 1,000 markers on 5 chromosomes, 10
folds, simulation seed 0): ``additive`` (40 QTL, no dominance or epistasis,
h2 0.5, 2 environments) and ``epistatic`` (20 QTL, 80% of the genetic variance
additive x additive, h2 0.8, 1 environment). For each data set and model seed
(the seed draws the inner split of the training records) every method is
cross-validated; r per environment pools the held-out folds; with simulated
data r with the true genetic value too. Wall time per method and data set::

    OMP_NUM_THREADS=1 python benchmarks/incontext.py --out /tmp/incontext \\
        --datasets wheat,additive,epistatic --seeds 0,1,2

Writes OUT/predictions.tsv (one row per held-out record, data set, method and
seed), OUT/fits.tsv (each head's early-stopping log) and prints the summary
(also OUT/summary.md); finished (data set, seed) runs are read back from OUT.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pretraining_study import wheat

from gperceiver.evaluate import cross_validate
from gperceiver.simulate import SimulationConfig, simulate

SIMULATIONS = {
    "additive": dict(
        n_qtl=40,
        dominance_variance=0.0,
        epistasis_variance=0.0,
        heritability=0.5,
        n_environments=2,
    ),  # fmt: skip
    "epistatic": dict(
        n_qtl=20,
        dominance_variance=0.0,
        epistasis_variance=0.8,
        heritability=0.8,
        n_environments=1,
    ),  # fmt: skip
}


UNSEEDED = ("gblup", "rkhs", "relatives-prior")  # the same on every model seed


def dataset(name: str):
    """(genotypes, phenotypes, truth or None)."""
    if name == "wheat":
        genotypes, phenotypes = wheat()
        return genotypes, phenotypes, None
    config = SimulationConfig(
        n_individuals=600,
        n_markers=1000,
        n_chromosomes=5,
        n_folds=10,
        seed=0,
        **SIMULATIONS[name],
    )
    data = simulate(config)
    return data.genotypes, data.phenotypes, data.truth


def run(name, seed, methods, relatives, out: Path, prior=None) -> pd.DataFrame:
    """Cross-validate every method on one data set with one model seed."""
    done = out / f"{name}-seed{seed}.tsv"
    if done.exists():
        return pd.read_csv(done, sep="\t")
    genotypes, phenotypes, truth = dataset(name)
    parts = []
    for method in methods:
        fits: list = []  # the method appends each head's log to this list
        params = {"seed": seed}
        if method.startswith("relatives"):
            params["relatives"] = relatives
        cache = {
            "params": params,
            "workdir": out / f"models-{name}-seed{seed}",  # the Perceiver's
            "relatives_log": fits,
            "relatives_prior_path": prior,  # None: the shipped weights
        }
        started = time.perf_counter()
        predictions, _ = cross_validate(
            phenotypes, genotypes, [method], progress=False, options=cache
        )
        seconds = time.perf_counter() - started
        for entry in fits:
            entry.update(dataset=name, seed=seed)
            with open(out / "fits.tsv", "a") as log:
                log.write(json.dumps(entry) + "\n")
        predictions = predictions.assign(dataset=name, seed=seed, seconds=seconds)
        if truth is not None:
            genetic = truth.set_index(["name", "block"])["genetic"]
            predictions = predictions.join(genetic, on=["name", "block"])
        parts.append(predictions)
        print(f"{name} seed {seed} {method}: {seconds:.0f} s", flush=True)
    frame = pd.concat(parts, ignore_index=True)
    frame.to_csv(done, sep="\t", index=False)
    return frame


def _r(part: pd.DataFrame, column: str) -> float:
    if column not in part or part[column].isna().all():
        return np.nan
    return float(np.corrcoef(part["prediction"], part[column])[0, 1])


def _sd(values) -> str:
    return f"{np.std(values, ddof=1):.4f}" if len(values) > 1 else "-"


def summary(frame: pd.DataFrame) -> str:
    """Markdown: per data set and method, mean over seeds (sd) of the mean r
    over environments, r per environment, r with the true genetic value, and
    seconds per seed."""
    lines = []
    for name, data in frame.groupby("dataset", sort=False):
        blocks = sorted(data["block"].unique())
        head = ["method", "seeds", "mean r (sd)", *[f"env {b}" for b in blocks]]
        head += ["r true g (sd)", "s per seed"]
        lines += [f"\n{name}\n", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---|" * len(head))
        for method, part in data.groupby("method", sort=False):
            per_seed, per_g, per_env = [], [], []
            for _, one in part.groupby("seed"):
                by_env = [_r(one[one["block"] == b], "response") for b in blocks]
                per_env.append(by_env)
                per_seed.append(np.mean(by_env))
                per_g.append(
                    np.mean([_r(one[one["block"] == b], "genetic") for b in blocks])
                )
            env = np.mean(per_env, 0)
            row = [method, str(len(per_seed))]
            row.append(f"{np.mean(per_seed):.4f} ({_sd(per_seed)})")
            row += [f"{v:.4f}" for v in env]
            row.append(f"{np.mean(per_g):.4f} ({_sd(per_g)})")
            row.append(f"{part.groupby('seed')['seconds'].first().mean():.0f}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--datasets", default="wheat,additive,epistatic")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="gblup,rkhs,relatives")
    parser.add_argument("--relatives", default="{}", help="JSON RelativesSettings")
    parser.add_argument("--prior", help="relatives-prior weights (path, no suffix)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    relatives = json.loads(args.relatives)
    frames = []
    for name in args.datasets.split(","):
        for seed in map(int, args.seeds.split(",")):
            methods = args.methods.split(",")
            if seed != int(args.seeds.split(",")[0]):  # these have no seed
                methods = [m for m in methods if m not in UNSEEDED]
            frames.append(run(name, seed, methods, relatives, out, args.prior))
    frame = pd.concat(frames, ignore_index=True)
    frame.to_csv(out / "predictions.tsv", sep="\t", index=False)
    text = summary(frame)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
