"""Cross-validate methods on the embedded wheat data (or a subset of its folds).

Prints pooled Pearson r per block, the mean over blocks and the wall time, and
appends them to ``--results`` (TSV), so every configuration tried stays on record::

    python benchmarks/wheat.py --methods perceiver --folds 0,1 \\
        --params '{"head_hidden": 32}' --label "head_hidden 32"

``--pretrain-params`` pretrains the encoder of ``perceiver-pretrained`` here,
with these options over the method's own (:data:`PRETRAINED_METHOD`), instead of
the method's default pretraining; ``--seeds`` repeats the run for each seed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gperceiver.evaluate import cross_validate, pooled_table
from gperceiver.evaluate.methods import PRETRAINED_METHOD
from gperceiver.finetuning import FinetuneSettings
from gperceiver.io import match_phenotypes, read_chroms, read_markers, read_phenotypes
from gperceiver.nn.heads import HeadConfig
from gperceiver.pretraining import pretrain_encoder

WHEAT = Path(__file__).resolve().parents[1] / "src/gperceiver/datasets/wheat"


def inner_validation_loss(workdir) -> float:
    """Mean over the trained models of their best inner-validation loss (the
    model-selection criterion: training folds only)."""
    best = [
        pd.read_csv(path)["val_loss"].min()
        for path in sorted(Path(workdir).glob("**/metrics.csv"))
        if path.parent.name in ("train", "phase1") and "pretrained" not in path.parts
    ]
    return float(np.mean(best)) if best else float("nan")


def pretrain(genotypes, params: dict, pretrain_params: dict, directory: Path) -> Path:
    """The encoder ``perceiver-pretrained`` would pretrain, with ``pretrain_params``
    over the method's defaults and ``params``; returns its directory."""
    pretrain_encoder(
        genotypes,
        directory,
        {**PRETRAINED_METHOD, **params, **pretrain_params},
        resume=False,
        also_known=(HeadConfig, FinetuneSettings),
    )
    return directory


def run(args, genotypes, phenotypes, params: dict, workdir) -> None:
    """One cross-validation; prints and appends its results."""
    options = {"params": params, "typed": {}}
    if workdir:
        options["workdir"] = workdir
    folds = args.folds.split(",") if args.folds else None
    started = time.perf_counter()
    cpu = time.process_time()
    if args.pretrain_params is not None:
        directory = Path(workdir or tempfile.mkdtemp()) / "pretrained"
        pretrain_params = json.loads(args.pretrain_params)
        options["pretrained"] = pretrain(genotypes, params, pretrain_params, directory)
    pretrain_seconds = time.perf_counter() - started
    _, accuracy = cross_validate(
        phenotypes,
        genotypes,
        args.methods.split(","),
        progress=False,
        options=options,
        folds=folds,
    )
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    pooled = pooled_table(accuracy)
    print(pooled.round(4).to_string())
    print(f"{seconds:.0f} s ({pretrain_seconds:.0f} s pretraining), {cpu:.0f} s CPU")
    inner = inner_validation_loss(workdir) if workdir else float("nan")
    print(f"inner validation loss (mean over models of the best): {inner:.4f}")
    rows = pooled.reset_index().assign(
        inner_val_loss=round(inner, 4),
        label=args.label,
        params=json.dumps(params),
        pretrain_params=args.pretrain_params or "",
        folds=args.folds or "all",
        seconds=round(seconds),
        cpu_seconds=round(cpu),
        load=round(os.getloadavg()[0], 1),
    )
    path = Path(args.results)
    rows.to_csv(path, sep="\t", index=False, mode="a", header=not path.exists())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="gblup,perceiver")
    parser.add_argument("--folds", help="comma-separated cv values (default: all)")
    parser.add_argument("--params", default="{}", help="JSON of model/train options")
    parser.add_argument("--pretrain-params", help="JSON: pretrain here with these")
    parser.add_argument("--seeds", help="comma-separated seeds: one run each")
    parser.add_argument("--label", default="")
    parser.add_argument("--workdir", default=None, help="keep models here")
    parser.add_argument("--results", default="wheat-results.tsv")
    args = parser.parse_args()

    markers = read_chroms(WHEAT / "chroms.tsv")
    genotypes = read_markers(WHEAT / "markers.tsv", markers)
    phenotypes = match_phenotypes(read_phenotypes(WHEAT / "phenotypes.tsv"), genotypes)
    params = {"progress": False, **json.loads(args.params)}
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
    for seed in seeds:
        here = params if seed is None else {**params, "seed": seed}
        workdir = args.workdir
        if workdir and seed is not None:
            workdir = str(Path(workdir) / f"seed-{seed}")
        print(f"seed {here.get('seed', 0)}:")
        run(args, genotypes, phenotypes, here, workdir)


if __name__ == "__main__":
    main()
