"""Predicting environments never seen in training: leave-one-environment-out (cv0).

Simulates a multi-environment trial whose genotype-by-environment interaction is
driven by daily weather (``gperceiver simulate --weather-days``), then runs
``evaluate --scheme cv0`` for main-effect GBLUP, reaction-norm GBLUP and the
Perceiver with the environment encoder. Reports, per method, the mean over
environments of the within-environment Pearson r with the phenotypes (the maize
competitions' metric) and with the true genetic values, next to the ceiling: the
r of the true genetic values themselves with the phenotypes.

    python benchmarks/environments.py --out /tmp/env-bench

Writes the simulated files, ``predictions.tsv``, ``accuracy.tsv`` and
``summary.tsv`` under ``--out``.
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
from gperceiver.evaluate import cross_validate, pearson
from gperceiver.simulate import SimulationConfig, simulate

# Perceiver settings, chosen on a development simulation (seed 11, never the
# benchmark seed): a small model, a low learning rate and a fixed budget of 40
# epochs on every training environment. Holding out training environments for
# early stopping (val_fraction 0.2) stopped before the interaction was learnt and
# left 4 of 19 environments out of training: r 0.13 instead of 0.54 on the two
# development environments where GxE matters most. Two seeds averaged
# (ensemble 2) raised r from 0.57 to 0.61 on a third but double the time, too
# much for the shared 2-core machine: one seed here. Attention is not
# recomputed in backward (1,000 markers need little memory).
PERCEIVER = {
    "width": 32,
    "n_latents": 16,
    "encode_iters": 1,
    "self_layers": 1,
    "lr": 3e-4,
    "epochs": 40,
    "val_fraction": 0.0,
    "checkpoint_attention": False,
}


def within_environment_r(predictions: pd.DataFrame, column: str) -> pd.Series:
    """Mean over blocks of the Pearson r of ``prediction`` with ``column``."""
    per_block = predictions.groupby(["method", "block"]).apply(
        lambda g: pearson(g["prediction"], g[column]), include_groups=False
    )
    return per_block.groupby(level="method").mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--individuals", type=int, default=400)
    parser.add_argument("--markers", type=int, default=1000)
    parser.add_argument("--environments", type=int, default=20)
    parser.add_argument("--weather-days", type=int, default=120)
    parser.add_argument("--gxe-correlation", type=float, default=0.5)
    parser.add_argument("--heritability", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--methods", default="gblup-main,gblup-rn,perceiver")
    parser.add_argument("--params", default=json.dumps(PERCEIVER))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)

    config = SimulationConfig(
        n_individuals=args.individuals,
        n_markers=args.markers,
        n_chromosomes=4,
        chromosome_length_bp=50_000_000,
        n_qtl=100,
        n_environments=args.environments,
        gxe_correlation=args.gxe_correlation,
        heritability=args.heritability,
        dominance_variance=0.0,
        epistasis_variance=0.0,
        weather_days=args.weather_days,
        seed=args.seed,
    )
    data = simulate(config)
    io.write_chroms(data.genotypes.markers, out / "chroms.tsv")
    io.write_markers(data.genotypes, out / "markers.tsv")
    io.write_phenotypes(data.phenotypes, out / "phenotypes.tsv")
    io.write_table(data.truth, out / "truth.tsv")
    io.write_covariates(data.covariates, out / "covariates.tsv")

    methods = args.methods.split(",")
    options = {
        "covariates": data.covariates,
        "params": json.loads(args.params),
        "typed": {"progress": False},
        "workdir": out / "models",
    }
    seconds = {}
    parts = []
    for method in methods:
        start = time.perf_counter()
        predictions, _ = cross_validate(
            data.phenotypes, data.genotypes, [method], True, options, scheme="cv0"
        )
        seconds[method] = time.perf_counter() - start
        parts.append(predictions)
    predictions = pd.concat(parts, ignore_index=True).merge(
        data.truth[["name", "block", "genetic"]], on=["name", "block"]
    )
    truth = data.truth.merge(data.phenotypes.table, on=["name", "block"])
    ceiling = np.mean(
        [pearson(g["genetic"], g["response"]) for _, g in truth.groupby("block")]
    )
    summary = pd.DataFrame(
        {
            "r_phenotype": within_environment_r(predictions, "response"),
            "r_true_genetic": within_environment_r(predictions, "genetic"),
            "seconds": pd.Series(seconds),
        }
    ).loc[methods]
    summary.loc["true genetic value (ceiling)"] = [ceiling, 1.0, np.nan]
    io.write_table(predictions, out / "predictions.tsv")
    io.write_table(summary.reset_index(names="method"), out / "summary.tsv")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(summary.round(3).to_string())
    print(f"peak RSS {peak:.2f} GiB, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
