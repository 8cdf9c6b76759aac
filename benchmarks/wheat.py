"""Cross-validate methods on the embedded wheat data (or a subset of its folds).

Prints pooled Pearson r per block, the mean over blocks and the wall time, and
appends them to ``--results`` (TSV), so every configuration tried stays on record::

    python benchmarks/wheat.py --methods perceiver --folds 0,1 \\
        --params '{"head_hidden": 32}' --label "head_hidden 32"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gperceiver.evaluate import cross_validate, pooled_table
from gperceiver.io import match_phenotypes, read_chroms, read_markers, read_phenotypes

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="gblup,perceiver")
    parser.add_argument("--folds", help="comma-separated cv values (default: all)")
    parser.add_argument("--params", default="{}", help="JSON of model/train options")
    parser.add_argument("--label", default="")
    parser.add_argument("--workdir", default=None, help="keep models here")
    parser.add_argument("--results", default="wheat-results.tsv")
    args = parser.parse_args()

    markers = read_chroms(WHEAT / "chroms.tsv")
    genotypes = read_markers(WHEAT / "markers.tsv", markers)
    phenotypes = match_phenotypes(read_phenotypes(WHEAT / "phenotypes.tsv"), genotypes)
    params = {"progress": False, **json.loads(args.params)}
    options = {"params": params, "typed": {}}
    if args.workdir:
        options["workdir"] = args.workdir
    folds = args.folds.split(",") if args.folds else None
    started = time.perf_counter()
    _, accuracy = cross_validate(
        phenotypes,
        genotypes,
        args.methods.split(","),
        progress=False,
        options=options,
        folds=folds,
    )
    seconds = time.perf_counter() - started
    pooled = pooled_table(accuracy)
    print(pooled.round(3).to_string())
    print(f"{seconds:.0f} s")
    inner = inner_validation_loss(args.workdir) if args.workdir else float("nan")
    print(f"inner validation loss (mean over models of the best): {inner:.4f}")
    rows = pooled.reset_index().assign(
        inner_val_loss=round(inner, 4),
        label=args.label,
        params=json.dumps(params),
        folds=args.folds or "all",
        seconds=round(seconds),
    )
    path = Path(args.results)
    rows.to_csv(path, sep="\t", index=False, mode="a", header=not path.exists())


if __name__ == "__main__":
    main()
