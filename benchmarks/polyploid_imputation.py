"""Imputation of material Beagle cannot read: tetraploids and 3-allele markers.

msprime sets of ``gperceiver.simulate`` (Ne = 100, chromosomes of 20 Mb at 1 cM/Mb),
10 % of the genotypes hidden (whole genotypes, seeded); concordance on exactly
those entries for panel attention (``impute_with_panel``, defaults), kNN (k = 10,
genome-wide squared copy-count distance on jointly called loci, the most common
genotype among the neighbours called there) and the per-marker most frequent
genotype::

    python benchmarks/polyploid_imputation.py --individuals 500 --markers 4000
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np
import torch

from gperceiver.data import Genotypes
from gperceiver.imputation import PanelImputeSettings, impute_with_panel
from gperceiver.nn.panel import PanelGenotypes
from gperceiver.simulate import SimulationConfig, simulate


def hide(g: Genotypes, share: float, seed: int):
    hidden = np.random.default_rng([seed, 3]).random(g.alleles.shape[:2]) < share
    alleles = g.alleles.copy()
    alleles[hidden] = 0
    return Genotypes(alleles, g.names, g.markers, g.n_alleles), hidden


def mode_calls(index: np.ndarray, n_genotypes: int) -> np.ndarray:
    """Most frequent called genotype index per marker ``(M,)``."""
    counts = np.stack([(index == k).sum(0) for k in range(n_genotypes)])
    return counts.argmax(0)


MAF_BINS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5]


def cpu() -> float:
    """User + system CPU seconds of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def allelic_scores(true_g, calls, hidden, observed_g, table) -> list[tuple]:
    """Per MAF bin ``(n, dose concordance, r^2)`` of every ALT allele's dose.

    Genotype indices ``true_g``, ``calls``, ``observed_g`` (N, M) (-1 missing;
    ``observed_g`` the masked input), ``hidden`` (N, M) bool, copy counts
    ``table`` (G, A). Each (hidden entry, ALT allele a >= 2) is binned by that
    allele's minor frequency among the true calls, and r^2 is the squared
    correlation of true and imputed dose, both centred at the marker's mean
    observed dose (imputation.py's definition; biallelic: the usual allelic r^2).
    """
    table = table.numpy()
    ploidy = table[0].sum()
    q_i, m_i = np.nonzero(hidden)
    t, g, c, f = [], [], [], []
    for a in range(1, table.shape[1]):
        dose = np.where(true_g >= 0, table[true_g.clip(0), a], np.nan)
        p = np.nanmean(dose, 0) / ploidy
        seen = np.where(observed_g >= 0, table[observed_g.clip(0), a], np.nan)
        t.append(dose[q_i, m_i])
        g.append(table[calls[q_i, m_i], a])
        c.append(np.nanmean(seen, 0)[m_i])
        f.append(np.minimum(p, 1 - p)[m_i])
    t, g, c, f = (np.concatenate(x) for x in (t, g, c, f))
    out = []
    for lo, hi in zip(MAF_BINS[:-1], MAF_BINS[1:], strict=True):
        sel = (f >= lo) & ((f < hi) if hi < 0.5 else True)
        dt, dg = t[sel] - c[sel], g[sel] - c[sel]
        if not sel.any():
            out.append((0, np.nan, np.nan))
            continue
        ok = sel.sum() > 1 and dt.std() > 0 and dg.std() > 0
        r = np.corrcoef(dt, dg)[0, 1] if ok else 0.0
        out.append((int(sel.sum()), float((t[sel] == g[sel]).mean()), float(r**2)))
    return out


def bin_cells(scores: list[tuple]) -> str:
    return " | ".join(
        "—" if n == 0 else f"{conc:.3f} / {r2:.3f}" for n, conc, r2 in scores
    )


def knn_calls(panel: PanelGenotypes, k: int = 10) -> np.ndarray:
    """Genotype index ``(N, M)``: the most common genotype of the k nearest."""
    g = panel.genotype.long()
    table = panel.counts_table()
    called = (g >= 0).float()
    counts = table[g.clamp(min=0)] * called[..., None]  # (N, M, A)
    sq = (counts**2).sum(-1)
    flat = counts.flatten(1)
    dist = sq @ called.T + called @ sq.T - 2 * flat @ flat.T
    dist = dist / (called @ called.T).clamp(min=1)
    dist.fill_diagonal_(float("inf"))
    near = dist.topk(k, largest=False).indices  # (N, k)
    onehot = torch.nn.functional.one_hot(g.clamp(min=0), len(table)).float()
    onehot = onehot * called[..., None]
    votes = onehot[near].sum(1)  # (N, M, G)
    mode = torch.from_numpy(mode_calls(g.numpy(), len(table)))
    best = votes.argmax(-1)
    return torch.where(votes.sum(-1) > 0, best, mode[None]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--individuals", type=int, default=500)
    parser.add_argument("--markers", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--block-scales", default="", help="e.g. 1,0.5,0.25")
    args = parser.parse_args()
    settings = PanelImputeSettings()
    if args.block_scales:
        scales = tuple(map(float, args.block_scales.split(",")))
        settings = PanelImputeSettings(block_scales=scales)
    rows = []
    for ploidy, n_alleles in ((4, 2), (2, 3), (4, 3)):
        config = SimulationConfig(
            n_individuals=args.individuals,
            n_markers=args.markers,
            n_chromosomes=2,
            chromosome_length_bp=20_000_000,
            population_size=100,
            mutation_rate=5e-8,
            ploidy=ploidy,
            n_alleles=n_alleles,
            missing_rate=0.0,
            seed=args.seed,
        )
        truth = simulate(config).genotypes
        masked, hidden = hide(truth, 0.1, args.seed)
        true_index = PanelGenotypes.from_genotypes(truth).genotype.numpy()
        panel = PanelGenotypes.from_genotypes(masked)
        n_g = len(panel.counts_table())
        t0, c0, l0 = time.perf_counter(), cpu(), os.getloadavg()[0]
        mode = mode_calls(panel.genotype.numpy(), n_g)
        t_mode = (time.perf_counter() - t0, cpu() - c0, l0)
        t0, c0, l0 = time.perf_counter(), cpu(), os.getloadavg()[0]
        knn = knn_calls(panel)
        t_knn = (time.perf_counter() - t0, cpu() - c0, l0)
        t0, c0, l0 = time.perf_counter(), cpu(), os.getloadavg()[0]
        result = impute_with_panel(masked, settings=settings, log=sys.stderr)
        t_panel = (time.perf_counter() - t0, cpu() - c0, l0)
        ours = PanelGenotypes.from_genotypes(result.genotypes).genotype.numpy()
        real = truth.n_alleles
        observed = panel.genotype.numpy()
        for name, calls, (wall, cpu_s, load) in (
            ("panel attention (impute defaults)", ours, t_panel),
            ("kNN (k = 10)", knn, t_knn),
            (
                "per-marker most frequent genotype",
                np.broadcast_to(mode, ours.shape),
                t_mode,
            ),
        ):
            hit = (calls == true_index)[hidden].mean()
            bins = allelic_scores(
                true_index, calls, hidden, observed, panel.counts_table()
            )
            rows.append(
                f"| ploidy {ploidy}, {real} alleles ({n_g} genotypes) | {name} | "
                f"{hit:.4f} | {bin_cells(bins)} | {wall:.1f} s | {cpu_s:.1f} s | "
                f"{load:.1f} |"
            )
        print(rows[-3:], file=sys.stderr)
    print(f"load average {os.getloadavg()[0]:.1f}")
    bins = " | ".join(
        f"dose conc. / r² MAF {lo:g}-{hi:g}"
        for lo, hi in zip(MAF_BINS[:-1], MAF_BINS[1:], strict=True)
    )
    print(f"| material | method | concordance | {bins} | wall | CPU | load |")
    print("|---|---|---|" + "---|" * (len(MAF_BINS) - 1) + "---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
