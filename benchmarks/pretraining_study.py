"""What each pretraining buys on wheat: finetune accuracy from scratch and after
masked, contrastive (twinned) and both pretrainings, plus imputation concordance.

For every seed, each pretraining task trains once on the genotypes of all wheat
lines (genotypes only, no phenotypes, as ``perceiver-pretrained`` does) with a share
of the complete genotypes hidden (set to missing). The hidden entries score the
imputation of the tasks with a trained allele decoder (masked, both); the same
model is then finetuned on the training folds of each split (full genotypes, same
marker map) and predicts the held-out fold; Pearson r per block pools the
held-out predictions of all folds, beside GBLUP on the same folds. ``scratch``
finetunes without pretraining. Everything with the same seed shares the seed.

    OMP_NUM_THREADS=1 python benchmarks/pretraining_study.py --workdir /tmp/study \\
        --pretrainings scratch,masked,contrastive,both --seeds 0,1,2

Results go to WORKDIR/predictions.tsv (one row per held-out record, pretraining
and seed), WORKDIR/imputation.tsv and a summary printed as markdown; finished runs
are read back from WORKDIR, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gperceiver import io
from gperceiver.checkpoint import read_json, write_json
from gperceiver.data import MISSING, Genotypes, Phenotypes
from gperceiver.evaluate import POOLED, accuracy_table, cross_validate
from gperceiver.finetuning import finetune, load_predictor
from gperceiver.pretraining import impute, load_masked_model, pretrain_encoder

TASKS = ("masked", "contrastive", "both")


def wheat() -> tuple[Genotypes, Phenotypes]:
    root = resources.files("gperceiver") / "datasets" / "wheat"
    markers = io.read_chroms(root / "chroms.tsv")
    genotypes = io.read_markers(root / "markers.tsv", markers)
    phenotypes = io.match_phenotypes(
        io.read_phenotypes(root / "phenotypes.tsv"), genotypes
    )
    return genotypes, phenotypes


def hide(genotypes: Genotypes, fraction: float, seed: int):
    """Genotypes with ``fraction`` of the complete entries set missing, and the
    hidden (N, M) mask."""
    complete = (genotypes.alleles != MISSING).all(-1)
    rng = np.random.default_rng([seed, 11])
    hidden = complete & (rng.random(complete.shape) < fraction)
    alleles = genotypes.alleles.copy()
    alleles[hidden] = MISSING
    return Genotypes(alleles, genotypes.names, genotypes.markers, genotypes.n_alleles)


def mode_concordance(genotypes: Genotypes, hidden: Genotypes) -> dict:
    """The baseline: each hidden entry called as its marker's most frequent
    complete genotype among the entries left visible."""
    mask = (hidden.alleles == MISSING).all(-1) & (genotypes.alleles != MISSING).all(-1)
    codes, visible = genotypes.codes(), (hidden.alleles != MISSING).all(-1)
    right = []
    for m in range(genotypes.n_markers):
        mode = np.bincount(codes[visible[:, m], m]).argmax()
        right.append(codes[mask[:, m], m] == mode)
    concordance = float(np.concatenate(right).mean())
    return {"concordance": concordance, "hidden": int(mask.sum())}


def pretrained_model(task, seed, genotypes, hidden_genotypes, args, workdir):
    """Pretrain once per (task, seed); returns the directory and the imputation row."""
    directory = workdir / "pretrain" / f"{task}-seed{seed}"
    timing = directory / "seconds.json"
    if not timing.exists():
        started = time.perf_counter()
        params = {**args.pretrain_params, "progress": False}
        typed = {"task": task, "seed": seed}
        pretrain_encoder(hidden_genotypes, directory, params, typed)
        write_json({"seconds": time.perf_counter() - started}, timing)
    seconds = read_json(timing)["seconds"]
    row = {"pretraining": task, "seed": seed, "pretrain_seconds": round(seconds, 1)}
    if task != "contrastive":
        model, config = load_masked_model(directory, hidden_genotypes)
        scaler = config["masked"]["frequency_scaler"]  # prior divided out, as impute
        filled = impute(
            model, hidden_genotypes, progress=False, frequency_scaler=scaler
        ).genotypes.alleles
        mask = (hidden_genotypes.alleles == MISSING).all(-1) & (
            genotypes.alleles != MISSING
        ).all(-1)
        truth = np.sort(genotypes.alleles[mask], -1)
        row["concordance"] = float((np.sort(filled[mask], -1) == truth).all(-1).mean())
        row["hidden"] = int(mask.sum())
    config = read_json(directory / "config.json")
    row.update(
        best_step=config["result"]["best_step"],
        best_val_loss=round(config["result"]["best_val_loss"], 4),
    )
    return directory, row


def held_out_predictions(
    out: Path, fold, genotypes, phenotypes, params: dict, seed: int, pretrained
) -> pd.DataFrame:
    """Finetune on every fold but ``fold`` into ``out`` and predict ``fold``: its
    phenotype rows plus ``prediction`` and the finetuning ``seconds`` (cached in
    ``out/predictions.tsv``)."""
    result = out / "predictions.tsv"
    if not result.exists():
        started = time.perf_counter()
        train, validation = phenotypes.split(str(fold))
        finetune(
            Phenotypes(train, "training folds"),
            genotypes,
            out,
            params,
            {"seed": seed},
            pretrained=pretrained,
            marker_inputs=io.read_marker_inputs(params, genotypes.markers),
        )
        predictor = load_predictor(out)
        rows = genotypes.index_of(validation["name"])
        values = predictor.predict(genotypes, rows).mean(-1)  # (n, E)
        part = validation[["name", "block", "cv", "response"]].copy()
        part["prediction"] = values[np.arange(len(rows)), part["block"].to_numpy()]
        part["seconds"] = time.perf_counter() - started
        io.write_table(part, result)
    part = pd.read_csv(result, sep="\t")
    return part.assign(cv=part["cv"].astype(str))


def fold_predictions(pretraining, seed, fold, genotypes, phenotypes, pretrained, args):
    """:func:`held_out_predictions` of one (pretraining, seed), with ``method``."""
    out = args.workdir / "finetune" / f"{pretraining}-seed{seed}-fold{fold}"
    params = {**args.finetune_params, "progress": False}
    part = held_out_predictions(
        out, fold, genotypes, phenotypes, params, seed, pretrained
    )
    return part.assign(method=f"{pretraining} seed {seed}")


def summary(predictions: pd.DataFrame, imputation: pd.DataFrame) -> str:
    """Markdown: per pretraining, Pearson r per block pooled over the folds (mean
    over seeds) and the mean over blocks per seed, then its mean and sd over
    seeds; imputation concordance per task."""
    pooled = accuracy_table(predictions)
    pooled = pooled[pooled["fold"] == POOLED]
    method = pooled["method"].str.rsplit(" seed ", n=1)
    pooled = pooled.assign(arm=method.str[0], seed=method.str[1])
    blocks = sorted(pooled["block"].unique())
    lines = [
        "| pretraining | seeds | mean r over blocks (sd over seeds) | per seed | "
        + " | ".join(f"block {b}" for b in blocks)
        + " |",
        "|---|---|---|---|" + "---|" * len(blocks),
    ]
    order = ["gblup", "scratch", *TASKS]
    for arm, group in sorted(pooled.groupby("arm"), key=lambda a: order.index(a[0])):
        per_seed = group.groupby("seed")["pearson_r"].mean()
        per_block = group.groupby("block")["pearson_r"].mean()
        sd = per_seed.std(ddof=1) if len(per_seed) > 1 else float("nan")
        lines.append(
            f"| {arm} | {len(per_seed)} | {per_seed.mean():.4f} ({sd:.4f}) | "
            + ", ".join(f"{r:.4f}" for r in per_seed)
            + " | "
            + " | ".join(f"{per_block[b]:.4f}" for b in blocks)
            + " |"
        )
    if len(imputation) and "concordance" in imputation:
        lines += ["", "| pretraining | seed | concordance | hidden | pretrain s |"]
        lines.append("|---|---|---|---|---|")
        for row in imputation.dropna(subset=["concordance"]).itertuples():
            seconds = getattr(row, "pretrain_seconds", float("nan"))
            lines.append(
                f"| {row.pretraining} | {row.seed} | {row.concordance:.4f} | "
                f"{int(row.hidden)} | {'' if pd.isna(seconds) else f'{seconds:.0f}'} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument(
        "--pretrainings",
        default="scratch,masked,contrastive,both",
        help="comma-separated: scratch, masked, contrastive, both",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--folds", default="0,1,2,3,4,5,6,7,8,9", help="wheat cv values to hold out"
    )
    parser.add_argument(
        "--pretrain-params",
        type=json.loads,
        default={},
        help="JSON object for pretrain, e.g. '{\"epochs\": 5}'",
    )
    parser.add_argument(
        "--finetune-params", type=json.loads, default={}, help="JSON for finetune"
    )
    parser.add_argument(
        "--hide-fraction",
        type=float,
        default=0.05,
        help="share of complete genotypes hidden during pretraining and scored",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [p.strip() for p in args.pretrainings.split(",") if p.strip()]
    unknown = set(names) - {"scratch", *TASKS}
    if unknown:
        parser.error(f"unknown pretrainings: {sorted(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    folds = [f.strip() for f in args.folds.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)

    genotypes, phenotypes = wheat()
    gblup, _ = cross_validate(phenotypes, genotypes, ["gblup"], False, folds=folds)
    parts = [gblup.assign(method="gblup seed -", cv=gblup["cv"].astype(str))]
    imputation_rows = []
    for seed in seeds:
        hidden = hide(genotypes, args.hide_fraction, seed)
        if set(names) & {"masked", "both"}:
            baseline = {"pretraining": "per-marker mode", "seed": seed}
            imputation_rows.append({**baseline, **mode_concordance(genotypes, hidden)})
        for name in names:
            pretrained = None
            if name != "scratch":
                pretrained, row = pretrained_model(
                    name, seed, genotypes, hidden, args, args.workdir
                )
                imputation_rows.append(row)
                print(json.dumps(row), flush=True)
            for fold in folds:
                parts.append(
                    fold_predictions(
                        name, seed, fold, genotypes, phenotypes, pretrained, args
                    )
                )
            print(f"{name} seed {seed}: {len(folds)} folds done", flush=True)
            predictions = pd.concat(parts, ignore_index=True)
            imputation = pd.DataFrame(imputation_rows)
            io.write_table(predictions, args.workdir / "predictions.tsv")
            io.write_table(imputation, args.workdir / "imputation.tsv")
            print(summary(predictions, imputation), flush=True)


if __name__ == "__main__":
    main()
