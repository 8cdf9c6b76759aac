"""gblup-rn's composite-likelihood fit against exact REML, fold by fold (cv0).

For each held-out environment of a data set written by ``environments_scale.py``
(``--data``), fits :class:`ReactionNorm` with each ``--groups`` value (0: exact
REML on every record) and reports the components, the wall time, r in the held-out
environment, the *exact* restricted log-likelihood at each fit's components (when
the fold has at most ``--exact-up-to`` records) and the predictions' agreement with
the first ``--groups`` value's.

    python benchmarks/environments_composite.py --data /tmp/envmid --groups 0,1000,500
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gperceiver import io
from gperceiver.baselines import Kernel, ReactionNorm, environment_kernel
from gperceiver.baselines.environment_reml import InteractionREML
from gperceiver.evaluate import pearson


def exact_likelihood(train, kernel, omega_all, envs_all, components) -> float:
    """Exact restricted log-likelihood of ``train`` at ``(s2g, s2ge, s2e)``."""
    rows = np.searchsorted(envs_all, train["block"].to_numpy())
    env_ids, env_of = np.unique(rows, return_inverse=True)
    x = np.eye(len(env_ids))[env_of]
    model = InteractionREML(
        train["response"].to_numpy(float),
        kernel.matrix,
        kernel.index_of(train["name"]),
        env_of,
        omega_all[np.ix_(env_ids, env_ids)],
        x,
    )
    s2g, s2ge, s2e = components
    return model.log_likelihood(np.log(s2g / s2e), np.log(s2ge / s2e))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--groups", default="0,1000")
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--exact-up-to", type=int, default=4000)
    parser.add_argument("--table", default="composite.tsv", help="under --data")
    args = parser.parse_args()
    data, groups = Path(args.data), [int(g) for g in args.groups.split(",")]
    markers = io.read_chroms(data / "chroms.tsv")
    genotypes = io.read_markers(data / "markers.tsv", markers)
    table = io.read_phenotypes(data / "phenotypes.tsv").table
    covariates = io.read_covariates(data / "covariates.tsv")
    kernel = Kernel.relationship(genotypes)
    envs_all = np.union1d(table["block"].unique(), covariates.environments)
    omega_all = environment_kernel(covariates, envs_all)
    rows = []
    for held in sorted(table["block"].unique())[: args.folds]:
        train, test = table[table["block"] != held], table[table["block"] == held]
        first = None
        for group in groups:
            start = time.perf_counter()
            model = ReactionNorm(kernel, omega_all, envs_all, reml_group_records=group)
            model.fit(train, None)
            seconds = time.perf_counter() - start
            prediction = model.predict(test)
            first = prediction if first is None else first
            components = (model.s2g_, model.s2ge_, model.s2e_)
            row = dict(zip(("s2g", "s2ge", "s2e"), components, strict=True))
            if len(train) <= args.exact_up_to:
                row["l_exact"] = exact_likelihood(
                    train, kernel, omega_all, envs_all, components
                )
            row.update(
                fold=held,
                group=group,
                seconds=seconds,
                r=pearson(prediction, test["response"].to_numpy()),
                corr_to_first=np.corrcoef(prediction, first)[0, 1],
            )
            rows.append(row)
            print(pd.DataFrame([row]).round(4).to_string(header=False), flush=True)
    frame = pd.DataFrame(rows)
    io.write_table(frame, data / args.table)
    print(frame.groupby("group")[["seconds", "s2g", "s2ge", "s2e", "r"]].mean())
    if "l_exact" in frame:
        best = frame[frame["group"] == groups[0]].set_index("fold")["l_exact"]
        frame["below_first"] = frame["fold"].map(best) - frame["l_exact"]
        print(frame.groupby("group")[["below_first", "corr_to_first"]].describe().T)


if __name__ == "__main__":
    main()
