"""Where panel attention misses rare variants: on a cached imputation.py set, the
probability the one-shot copy gives each hidden genotype, by MAF bin and true
minor-allele dose, and what re-weighting the heterozygote's probability before
the call (``b x P(het)``) would do to the concordance::

    python benchmarks/imputation.py --workdir /tmp/b7 --markers 2500 \\
        --chromosomes 1 --chromosome-length 50000000 --seed 7 --methods mode
    python benchmarks/panel_rare.py --workdir /tmp/b7 [--model JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import imputation as bench  # noqa: E402

from gperceiver.imputation import PanelImputeSettings, impute_with_panel  # noqa: E402
from gperceiver.nn.panel import PanelConfig  # noqa: E402

BINS = [(0.0, 0.02), (0.02, 0.05), (0.05, 0.1), (0.1, 0.5)]


def nearest_carriers(observed, dose, entries, alt_minor, reach=400):
    """For hidden heterozygotes ``entries`` (rows, loci): the rank, among all
    other individuals by summed squared dose difference over the ``reach``
    markers either side (jointly called loci of the masked data), of the nearest
    carrier of the minor allele, and that carrier's distance minus the nearest
    non-carrier's; ``(ranks, gaps, carriers)``."""
    ranks, gaps, carriers = [], [], []
    for q, j, minor2 in zip(*entries, alt_minor, strict=True):
        lo, hi = max(0, j - reach), min(observed.shape[1], j + reach)
        a, b = observed[q, lo:hi], observed[:, lo:hi]
        both = (a >= 0)[None] & (b >= 0)
        d = (((a[None] - b) ** 2) * both).sum(1).astype(float)
        d[q] = np.inf
        carrier = (dose[:, j] if minor2 else 2 - dose[:, j]) >= 1
        carrier[q] = False
        others = ~carrier
        others[q] = False
        ranks.append(int(np.flatnonzero(carrier[np.argsort(d)])[0]))
        gaps.append(d[carrier].min() - d[others].min())
        carriers.append(int(carrier.sum()))
    return np.array(ranks), np.array(gaps), np.array(carriers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--model", default="{}", help="PanelConfig fields as JSON")
    parser.add_argument("--ranks", type=int, default=150, help="hets per group")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    truth, masked, _ = bench.load(args.workdir)
    model = replace(PanelConfig(), **json.loads(args.model))
    result = impute_with_panel(masked, settings=PanelImputeSettings(model=model))
    dose = bench.dosage(truth.alleles)  # (N, M) copies of allele 2
    p = dose.mean(0) / 2
    freq = np.minimum(p, 1 - p)[result.loci]
    probs = result.probabilities  # (K, 3): 1/1, 1/2, 2/2
    true = dose[result.rows, result.loci]
    alt_minor = p[result.loci] < 0.5
    minor_probs = np.where(alt_minor[:, None], probs, probs[:, ::-1])
    minor_true = np.where(alt_minor, true, 2 - true)
    print("| MAF | true minor copies | n | called right | mean P(het) | "
          "P(het) at quantiles 0.1, 0.25, 0.5, 0.75, 0.9 |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for lo, hi in BINS:
        for copies in (0, 1, 2):
            sel = (freq >= lo) & (freq < hi) & (minor_true == copies)
            if not sel.any():
                continue
            q = minor_probs[sel]
            right = (q.argmax(1) == copies).mean()
            quant = ", ".join(
                f"{v:.3f}" for v in np.quantile(q[:, 1], [0.1, 0.25, 0.5, 0.75, 0.9])
            )
            print(f"| {lo:g}-{hi:g} | {copies} | {sel.sum():,} | {right:.3f} | "
                  f"{q[:, 1].mean():.3f} | {quant} |")  # fmt: skip
    print()
    print("| MAF | concordance, b = 1 | 1.5 | 2 | 3 | 5 |")
    print("|---|---|---|---|---|---|")
    for lo, hi in BINS:
        sel = (freq >= lo) & (freq < hi)
        cells = []
        for b in (1, 1.5, 2, 3, 5):
            w = probs[sel].copy()
            w[:, 1] *= b
            cells.append(f"{(w.argmax(1) == true[sel]).mean():.4f}")
        print(f"| {lo:g}-{hi:g} | " + " | ".join(cells) + " |")
    print()
    observed = bench.dosage(masked.alleles)
    rare_het = (freq < 0.02) & (minor_true == 1)
    right = minor_probs.argmax(1) == 1
    rng = np.random.default_rng(0)
    for name, group in (("missed", rare_het & ~right), ("called", rare_het & right)):
        pick = rng.choice(np.flatnonzero(group), args.ranks, replace=False)
        entries = (result.rows[pick], result.loci[pick])
        ranks, gaps, n = nearest_carriers(observed, dose, entries, alt_minor[pick])
        print(
            f"MAF < 0.02 hets {name} ({len(pick)} drawn): nearest carrier's rank "
            f"median {np.median(ranks):g} (quartiles {np.quantile(ranks, 0.25):g}, "
            f"{np.quantile(ranks, 0.75):g}), its distance minus the nearest "
            f"non-carrier's median {np.median(gaps):g}; carriers {np.median(n):g}"
        )


if __name__ == "__main__":
    main()
