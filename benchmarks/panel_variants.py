"""Variants of panel attention on the cached sets of imputation.py (one-shot) or
reference_imputation.py (``--reference``), in process: the model and fitting
settings as JSON, scored as those scripts score (results added to their tables)::

    python benchmarks/imputation.py --workdir /tmp/b7 --markers 2500 \\
        --chromosomes 1 --chromosome-length 50000000 --seed 7 --methods mode
    python benchmarks/panel_variants.py --workdir /tmp/b7 --label one-pass \\
        --model '{"layers": 1}'        # --model: PanelConfig fields
    python benchmarks/panel_variants.py --workdir /tmp/b7 --reference \\
        --label one-pass --model '{"layers": 1}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import imputation as bench  # noqa: E402
import reference_imputation as ref  # noqa: E402

from gperceiver.imputation import PanelImputeSettings, impute_with_panel  # noqa: E402
from gperceiver.nn.panel import PanelConfig  # noqa: E402
from gperceiver.tasks.panel import PanelFitConfig  # noqa: E402


def settings_from(model: str, fit: str, scales: str = "") -> PanelImputeSettings:
    options = json.loads(model or "{}")
    if "head_radii" in options:
        options["head_radii"] = tuple(options["head_radii"])
    extra = {"block_scales": tuple(map(float, scales.split(",")))} if scales else {}
    return PanelImputeSettings(
        model=replace(PanelConfig(), **options),
        fit=replace(PanelFitConfig(), **json.loads(fit or "{}")),
        **extra,
    )


def one_shot(work: Path, label: str, settings: PanelImputeSettings, argv: str):
    truth, masked, hidden = bench.load(work)
    if hidden.dtype == bool:  # public_imputation.py's (N, M) mask
        hidden = np.flatnonzero(hidden.ravel())
    load_before, cpu_before, t0 = os.getloadavg()[0], bench.cpu_seconds(), time.time()
    result = impute_with_panel(masked, settings=settings)
    info = {
        "method": "gperceiver",
        "label": label,
        "seconds": time.time() - t0,
        "command": f"benchmarks/panel_variants.py {argv}",
        "cpu_seconds": bench.cpu_seconds() - cpu_before,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "summary": {k: v for k, v in result.summary.items() if k != "val_loss"},
    }
    imputed = bench.dosage(result.genotypes.alleles)
    (work / "results").mkdir(exist_ok=True)
    np.savez_compressed(
        work / "results" / f"{label}.npz", imputed=imputed, info=json.dumps(info)
    )
    print(bench.table(work, truth, masked, hidden))


def reference(work: Path, label: str, settings: PanelImputeSettings, argv: str):
    panel, targets, typed, out = ref.prepare(work, 800, 0.1, 1)
    from gperceiver.io.vcf import read_vcf

    typed_targets = read_vcf(out / "targets.vcf.gz")
    load_before, cpu_before, t0 = os.getloadavg()[0], bench.cpu_seconds(), time.time()
    result = impute_with_panel(typed_targets, panel, settings=settings)
    seconds = {"total": time.time() - t0, "cpu": bench.cpu_seconds() - cpu_before}
    untyped = np.setdiff1d(np.arange(targets.n_markers), typed)
    n_t = targets.n_individuals
    flat = (np.arange(n_t)[:, None] * targets.n_markers + untyped[None]).ravel()
    truth_d, panel_d = bench.dosage(targets.alleles), bench.dosage(panel.alleles)
    scores = bench.score(truth_d, bench.dosage(result.genotypes.alleles), flat, panel_d)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[label] = {
        "seconds": seconds,
        "command": f"benchmarks/panel_variants.py {argv}",
        "load": [load_before, os.getloadavg()[0]],
        "scores": scores,
    }
    path.write_text(json.dumps(results, indent=1))
    print(ref.table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--model", default="", help="PanelConfig fields as JSON")
    parser.add_argument("--fit", default="", help="PanelFitConfig fields as JSON")
    parser.add_argument("--scales", default="", help="block_scales, e.g. 1,0.5")
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    settings = settings_from(args.model, args.fit, args.scales)
    argv = " ".join(sys.argv[1:])
    run = reference if args.reference else one_shot
    run(Path(args.workdir), args.label, settings, argv)


if __name__ == "__main__":
    main()
