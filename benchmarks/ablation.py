"""Ablation study: what each part of the model buys in accuracy and time, on wheat
and on a simulated data set whose causal markers (QTL) are known.

Every arm changes one thing from the default model (finetuned from scratch):
position encoding (learned only, Fourier only, both = default, refined over the
LD graph), number of latents, encode iterations and weight sharing, head (latent
vs pool), pretraining (none = default, masked, both; one pretraining per seed on
all genotypes, no phenotypes, as ``perceiver-pretrained`` does) and, on the
simulated data only, prior knowledge of the QTL: as marker annotations (added to
the marker tokens) or as marker weights (of the additive path's kernel, REML
choosing how much they count), each the true QTL indicator, a noisy score
(indicator + N(0, 1); clipped at 0 as weights) or the indicator shuffled over
markers (a control that must not help); GBLUP on the QTL alone shows how much
the prior knows. For each data set, seed and arm a model is
finetuned on the training folds of each split and predicts the held-out fold;
Pearson r per block pools the held-out predictions of all folds, beside GBLUP and
RKHS on the same folds.

    OMP_NUM_THREADS=1 python benchmarks/ablation.py --workdir /tmp/ablation \\
        --datasets wheat,sim --seeds 0,1,2

With the default additive path (a Gaussian-kernel RKHS fit inside the model, the
network learning a correction) short runs come back as RKHS itself;
``--finetune-params '{"additive": false}'`` compares the networks alone.

Results go to WORKDIR/predictions.tsv (one row per held-out record, data set, arm
and seed), WORKDIR/timing.tsv and a markdown summary (printed and written to
WORKDIR/summary.md); finished runs are read back from WORKDIR, so an
interrupted study resumes where it stopped, and ``--summary-only`` prints the
summary of the runs finished so far.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pretraining_study import held_out_predictions, wheat

from gperceiver import io
from gperceiver.checkpoint import read_json, write_json
from gperceiver.data import Genotypes, Phenotypes
from gperceiver.evaluate import POOLED, accuracy_table, cross_validate
from gperceiver.pretraining import pretrain_encoder
from gperceiver.simulate import SimulationConfig, simulate

# arm -> (hyper-parameters, pretraining task or None, prior or None); a prior is
# (kind of QTL score, the finetune parameter that takes its file)
ARMS = {
    "default": ({}, None, None),
    "position learned": ({"fourier_position": False}, None, None),
    "position fourier": ({"learned_marker_embedding": False}, None, None),
    "position graph": ({"marker_graph": "ld"}, None, None),
    "latents 8": ({"n_latents": 8}, None, None),
    "latents 64": ({"n_latents": 64}, None, None),
    "iters 1": ({"encode_iters": 1}, None, None),
    "iters 3": ({"encode_iters": 3}, None, None),
    "iters 2 unshared": ({"share_weights": "none"}, None, None),
    "iters 3 unshared": ({"encode_iters": 3, "share_weights": "none"}, None, None),
    "head latent": ({"head": "latent"}, None, None),
    "pretrain masked": ({}, "masked", None),
    "pretrain both": ({}, "both", None),
    "annotations qtl": ({}, None, ("qtl", "annotations")),
    "annotations noisy": ({}, None, ("noisy", "annotations")),
    "annotations shuffled": ({}, None, ("shuffled", "annotations")),
    "weights qtl": ({}, None, ("qtl", "marker_weights")),
    "weights noisy": ({}, None, ("noisy-clipped", "marker_weights")),
    "weights shuffled": ({}, None, ("shuffled", "marker_weights")),
}
REFERENCES = ("gblup", "rkhs")
ORACLE = "gblup on the QTL only"
PRIORS = ("qtl", "noisy-clipped", "shuffled")  # weighted GBLUP reference rows
WEIGHTED = [f"gblup weights {kind}" for kind in PRIORS]


def simulated(args) -> tuple[Genotypes, Phenotypes, np.ndarray]:
    """The simulated data set (fixed seed, independent of the model seeds) and
    its QTL marker indices."""
    config = SimulationConfig(
        n_individuals=args.sim_individuals,
        n_markers=args.sim_markers,
        n_chromosomes=args.sim_chromosomes,
        n_qtl=args.sim_qtl,
        n_environments=args.sim_environments,
        n_folds=10,
        seed=args.sim_seed,
    )
    data = simulate(config)
    return data.genotypes, data.phenotypes, data.qtl


def write_prior(kind: str, genotypes: Genotypes, qtl, path: Path) -> None:
    """``marker, qtl_score``: the QTL indicator, indicator + N(0, 1) (clipped at 0
    for ``noisy-clipped``), or the indicator permuted over markers (seeded, the
    same for every model seed)."""
    indicator = np.zeros(genotypes.n_markers)
    indicator[qtl] = 1.0
    rng = np.random.default_rng(17)
    if kind.startswith("noisy"):
        indicator = indicator + rng.standard_normal(len(indicator))
        if kind == "noisy-clipped":
            indicator = np.maximum(indicator, 0.0)
    elif kind == "shuffled":
        indicator = rng.permutation(indicator)
    frame = pd.DataFrame({"marker": genotypes.markers.names, "qtl_score": indicator})
    io.write_table(frame, path)


def pretrained_model(dataset, task, seed, genotypes, params, workdir) -> Path:
    """Pretrain once per (data set, task, seed) on every genotype."""
    directory = workdir / dataset / "pretrain" / f"{task}-seed{seed}"
    timing = directory / "seconds.json"
    if not timing.exists():
        started = time.perf_counter()
        pretrain_encoder(genotypes, directory, params, {"task": task, "seed": seed})
        write_json({"seconds": time.perf_counter() - started}, timing)
    return directory


def fold_predictions(run: dict, fold: str, genotypes, phenotypes) -> pd.DataFrame:
    """Held-out predictions of fold ``fold`` for one (data set, arm, seed) ``run``,
    with the finetuning time (cached in the run's directory)."""
    part = held_out_predictions(
        run["dir"] / f"fold{fold}",
        fold,
        genotypes,
        phenotypes,
        run["params"],
        run["seed"],
        run["pretrained"],
    )
    return part.assign(method=f"{run['arm']} seed {run['seed']}")


def reference_predictions(
    phenotypes, genotypes, folds, dataset, methods=REFERENCES, label=None, options=None
) -> pd.DataFrame:
    """Held-out predictions of the baseline ``methods`` on the same folds (named
    ``label`` if given): GBLUP is the field's standard, RKHS the kernel the
    default model's additive path fits."""
    table, _ = cross_validate(
        phenotypes, genotypes, list(methods), False, options, folds=folds
    )
    method = (table["method"] if label is None else label) + " seed -"
    return table.assign(method=method, cv=table["cv"].astype(str), dataset=dataset)


def summary(predictions: pd.DataFrame, timing: pd.DataFrame) -> str:
    """Markdown per data set: per arm, mean over blocks of the pooled Pearson r
    (mean and sd over seeds), its difference to the default arm paired by seed,
    r per block (mean over seeds), finetuning seconds per fold and pretraining
    seconds."""
    lines = []
    for dataset, of_set in predictions.groupby("dataset", sort=False):
        pooled = accuracy_table(of_set)
        pooled = pooled[pooled["fold"] == POOLED]
        method = pooled["method"].str.rsplit(" seed ", n=1)
        pooled = pooled.assign(arm=method.str[0], seed=method.str[1])
        blocks = sorted(pooled["block"].unique())
        per_seed = pooled.groupby(["arm", "seed"])["pearson_r"].mean()
        default = per_seed.get("default")
        lines += [
            f"### {dataset}",
            "",
            "| arm | seeds | mean r (sd over seeds) | minus default (paired) | "
            + " | ".join(f"block {b}" for b in blocks)
            + " | finetune s/fold | pretrain s |",
            "|---|---|---|---|" + "---|" * len(blocks) + "---|---|",
        ]
        references = (*REFERENCES, ORACLE, *WEIGHTED)
        arms = [a for a in (*references, *ARMS) if a in set(pooled["arm"])]
        for arm in arms:
            seeds = per_seed[arm]
            sd = seeds.std(ddof=1) if len(seeds) > 1 else float("nan")
            diff = ""
            if default is not None and arm not in (*references, "default"):
                paired = (seeds - default).dropna()
                diff = f"{paired.mean():+.4f} ({len(paired)})" if len(paired) else ""
            per_block = pooled[pooled["arm"] == arm].groupby("block")["pearson_r"]
            times = timing[(timing["dataset"] == dataset) & (timing["arm"] == arm)]
            fit = times["finetune_s"].mean() if len(times) else float("nan")
            pre = times["pretrain_s"].mean() if len(times) else float("nan")
            lines.append(
                f"| {arm} | {len(seeds)} | {seeds.mean():.4f} ({sd:.4f}) | {diff} | "
                + " | ".join(f"{per_block.mean()[b]:.4f}" for b in blocks)
                + f" | {'' if np.isnan(fit) else f'{fit:.0f}'}"
                + f" | {'' if np.isnan(pre) else f'{pre:.0f}'} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--datasets", default="wheat,sim", help="wheat and/or sim")
    parser.add_argument(
        "--arms",
        default="all",
        help="comma-separated arm names (see ARMS) or 'all'; annotation and "
        "weight arms run on the simulated data only",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--folds", default="0,1,2,3,4,5,6,7,8,9", help="cv values to hold out"
    )
    parser.add_argument(
        "--finetune-params", type=json.loads, default={}, help="JSON for finetune"
    )
    parser.add_argument(
        "--pretrain-params", type=json.loads, default={}, help="JSON for pretrain"
    )
    parser.add_argument("--sim-individuals", type=int, default=600)
    parser.add_argument("--sim-markers", type=int, default=1000)
    parser.add_argument("--sim-chromosomes", type=int, default=5)
    parser.add_argument("--sim-qtl", type=int, default=40)
    parser.add_argument("--sim-environments", type=int, default=2)
    parser.add_argument("--sim-seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1)"
    )
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="summarise the runs already finished in WORKDIR; train nothing",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arms = list(ARMS) if args.arms == "all" else args.arms.split(",")
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms: {sorted(unknown)}; choose from {list(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    folds = [f.strip() for f in args.folds.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    parts, timing_rows = [], []
    for dataset in args.datasets.split(","):
        if dataset == "wheat":
            genotypes, phenotypes = wheat()
            qtl = None
        elif dataset == "sim":
            genotypes, phenotypes, qtl = simulated(args)
        else:
            parser.error(f"unknown data set {dataset!r}")
        parts.append(reference_predictions(phenotypes, genotypes, folds, dataset))
        if qtl is not None:  # what the annotations know: GBLUP on the causal markers
            causal = genotypes.subset(markers=np.sort(qtl))
            parts.append(
                reference_predictions(
                    phenotypes, causal, folds, dataset, ["gblup"], ORACLE
                )
            )
            for kind, label in zip(PRIORS, WEIGHTED, strict=True):
                path = args.workdir / dataset / f"prior-{kind}.tsv"
                write_prior(kind, genotypes, qtl, path)
                prior_file = {"marker_weights": str(path)}
                inputs = io.read_marker_inputs(prior_file, genotypes.markers)
                options = {"marker_inputs": inputs}
                parts.append(
                    reference_predictions(
                        phenotypes, genotypes, folds, dataset, ["gblup-weighted"],
                        label, options,
                    )
                )  # fmt: skip
        for seed in seeds:
            for arm in arms:
                params, task, prior = ARMS[arm]
                if prior and qtl is None:
                    continue  # no known causal markers
                params = {**args.finetune_params, **params, "progress": False}
                if prior:
                    kind, key = prior
                    path = args.workdir / dataset / f"prior-{kind}.tsv"
                    write_prior(kind, genotypes, qtl, path)
                    params[key] = str(path)
                run_dir = args.workdir / dataset / arm.replace(" ", "-") / f"seed{seed}"
                done = all(
                    (run_dir / f"fold{f}" / "predictions.tsv").exists() for f in folds
                )
                if args.summary_only and not done:
                    continue
                pretrained, pretrain_s = None, float("nan")
                if task:
                    pre_params = {**args.pretrain_params, "progress": False}
                    pretrained = pretrained_model(
                        dataset, task, seed, genotypes, pre_params, args.workdir
                    )
                    pretrain_s = read_json(pretrained / "seconds.json")["seconds"]
                run = {
                    "arm": arm,
                    "seed": seed,
                    "params": params,
                    "pretrained": pretrained,
                    "dir": run_dir,
                }
                runs = [
                    fold_predictions(run, fold, genotypes, phenotypes) for fold in folds
                ]
                parts += [r.assign(dataset=dataset) for r in runs]
                timing_rows.append(
                    {
                        "dataset": dataset,
                        "arm": arm,
                        "seed": seed,
                        "finetune_s": float(
                            np.mean([r["seconds"].iloc[0] for r in runs])
                        ),
                        "pretrain_s": pretrain_s,
                    }
                )
                if args.summary_only:
                    continue
                print(
                    f"{dataset} {arm} seed {seed}: {len(folds)} folds done", flush=True
                )
                predictions = pd.concat(parts, ignore_index=True)
                timing = pd.DataFrame(timing_rows)
                io.write_table(predictions, args.workdir / "predictions.tsv")
                io.write_table(timing, args.workdir / "timing.tsv")
    text = summary(pd.concat(parts, ignore_index=True), pd.DataFrame(timing_rows))
    if args.summary_only:
        print(text, flush=True)
        return
    with io.atomic_path(args.workdir / "summary.md") as tmp:
        tmp.write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
