"""Cost of fitting the additive path (GBLUP or RKHS inside a phenotype model).

``finetune`` fits it once per training group before the network trains: REML per
block on the training records (leave-one-out offsets), then again on training plus
validation records; with ``--marker-weights`` for every prior mix as well. This
times :func:`gperceiver.finetuning.fit_additive_path` alone on random diploid
biallelic genotypes (allele frequencies uniform in 0.05-0.5), one standard-normal
record per individual and block, a 90/10 training/validation split, and a prior on
2% of the markers.

    OMP_NUM_THREADS=2 python benchmarks/additive_fit.py --individuals 600 --markers 5000

Run it with another checkout's ``src`` on ``PYTHONPATH`` to time an older version.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from gperceiver.data import Genotypes, MarkerMap
from gperceiver.finetuning import fit_additive_path
from gperceiver.nn.heads import GaussianEffects, MarkerEffects
from gperceiver.tasks.phenotype import Records, Scaling


def random_data(n: int, m: int, blocks: int, seed: int):
    """Genotypes, training and validation :class:`Records` and a 0/1 prior."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.5, m)
    alleles = 1 + (rng.random((n, m, 2)) < p[None, :, None])
    markers, _ = MarkerMap.from_columns(
        ["1"] * m, [f"m{j}" for j in range(m)], range(m)
    )
    names = np.array([f"i{k}" for k in range(n)])
    g = Genotypes(np.sort(alleles, -1).astype(np.uint8), names, markers, 2)
    table = pd.DataFrame(
        {
            "name": np.repeat(names, blocks),
            "block": np.tile(np.arange(blocks), n),
            "response": rng.standard_normal(n * blocks),
        }
    )
    is_val = table["name"].isin(names[: n // 10])
    train = Records.from_table(table[~is_val], g, blocks)
    val = Records.from_table(table[is_val], g, blocks)
    prior = (rng.random(m) < 0.02).astype(float)
    return g, train, val, prior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--individuals", type=int, default=600)
    parser.add_argument("--markers", type=int, default=5000)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="best of")
    args = parser.parse_args()
    g, train, val, prior = random_data(args.individuals, args.markers, args.blocks, 0)
    scaling = Scaling.fit(train)
    n_kept = len(train.join(val).rows)
    print(f"| kernel | prior | seconds (best of {args.repeats}) |")
    print("|---|---|---|")
    for kernel in ("linear", "gaussian"):
        for with_prior in (False, True):
            seconds = []
            for _ in range(args.repeats):
                if kernel == "linear":
                    additive = MarkerEffects(g.n_markers, 3, args.blocks)
                else:
                    additive = GaussianEffects(
                        g.n_markers, 2, args.blocks, n_kept, 2 * g.n_markers
                    )
                started = time.perf_counter()
                fit_additive_path(
                    additive, g, train, val, scaling, prior if with_prior else None
                )
                seconds.append(time.perf_counter() - started)
            print(
                f"| {kernel} | {'2%' if with_prior else 'none'} | {min(seconds):.2f} |"
            )


if __name__ == "__main__":
    main()
