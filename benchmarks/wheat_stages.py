"""CPU time of the stages of ``perceiver-pretrained`` on wheat: one pretraining
(``--pre-params``), then the folds under cProfile with the process clock (so a
loaded machine inflates the numbers less than wall time)::

    OMP_NUM_THREADS=1 python benchmarks/wheat_stages.py --workdir /tmp/stages \\
        --pre-params '{"epochs": 1}' --folds 1,2
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

from gperceiver.evaluate import cross_validate, pooled_table
from gperceiver.finetuning import FinetuneSettings
from gperceiver.io import match_phenotypes, read_chroms, read_markers, read_phenotypes
from gperceiver.nn.heads import HeadConfig
from gperceiver.pretraining import pretrain_encoder

WHEAT = Path(__file__).resolve().parents[1] / "src/gperceiver/datasets/wheat"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pre-params", default='{"epochs": 1}')
    parser.add_argument("--params", default="{}")
    parser.add_argument("--methods", default="perceiver-pretrained")
    parser.add_argument("--folds", default="1,2")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--top", type=int, default=60)
    args = parser.parse_args()
    genotypes = read_markers(WHEAT / "markers.tsv", read_chroms(WHEAT / "chroms.tsv"))
    phenotypes = match_phenotypes(read_phenotypes(WHEAT / "phenotypes.tsv"), genotypes)
    pretrained = Path(args.workdir) / "pretrained"
    cpu, wall = time.process_time(), time.perf_counter()
    pre_params = {"progress": False, **json.loads(args.pre_params)}
    known = (HeadConfig, FinetuneSettings)
    pretrain_encoder(genotypes, pretrained, pre_params, resume=False, also_known=known)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"pretraining: {cpu:.1f} s CPU, {wall:.1f} s wall")
    options = {
        "params": {"progress": False, **json.loads(args.params)},
        "pretrained": pretrained,
        "workdir": Path(args.workdir) / "folds",
        "resume": False,
    }
    profile = cProfile.Profile(time.process_time)
    cpu, wall = time.process_time(), time.perf_counter()
    profile.enable()
    _, accuracy = cross_validate(
        phenotypes,
        genotypes,
        args.methods.split(","),
        progress=False,
        options=options,
        folds=args.folds.split(",") if args.folds else None,
    )
    profile.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(pooled_table(accuracy).round(4).to_string())
    print(f"folds: {cpu:.1f} s CPU, {wall:.1f} s wall")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
