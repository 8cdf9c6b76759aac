"""Panel attention's candidate shortlist (hashed identity by state) against the
exact all-pairs search, on a masked benchmark set of ``benchmarks/imputation.py``.

Recall: for ``--queries`` individuals (their masked genotypes) and every segment
of windows, the share of the exact ``top`` nearest other individuals (summed
squared copy-count distance over the segment's jointly called loci) that are in
the shortlist of ``k``. Accuracy: concordance on the hidden genotypes of
``impute_with_panel`` with each ``--shortlist`` (a panel of at most ``k`` is read
whole, so k >= N is exact full attention)::

    python benchmarks/imputation.py --workdir /tmp/bench2500 --markers 2500 \\
        --chromosomes 1 --chromosome-length 50000000 --methods mode
    python benchmarks/panel_shortlist.py --workdir /tmp/bench2500 \\
        --shortlist 64,128,1024
    # time of one copy against the panel size: full attention vs a shortlist of 128
    python benchmarks/panel_shortlist.py --scaling 1000,2000,4000 --shortlist 128 \\
        --queries 64
    # every individual copied in chunks of 256: the candidate index rebuilt for
    # each chunk (as impute did) against built once per chromosome (as it does)
    python benchmarks/panel_shortlist.py --reuse 5000 --shortlist 128 --markers 1024
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from imputation import load  # noqa: E402

from gperceiver.imputation import PanelImputeSettings, impute_with_panel  # noqa: E402
from gperceiver.nn.candidates import SearchConfig  # noqa: E402
from gperceiver.nn.panel import PanelConfig, PanelGenotypes  # noqa: E402
from gperceiver.nn.panel_shortlist import ShortlistPanel, padded_windows  # noqa: E402


def exact_neighbours(query, panel_w, features, rows, w_lo, w_hi, top, own):
    """The ``top`` nearest panel rows ``(Q, top)`` on windows ``w_lo:w_hi``."""
    q = features[query[:, w_lo:w_hi]]  # (Q, W', S, F); index G is missing
    p = features[panel_w[:, w_lo:w_hi]]  # (R, W', S, F)
    # d = sum over jointly called loci of |c_q - c_p|^2
    called_q, sq_q, c_q = q[..., 0], q[..., 1], q[..., 2:]
    called_p, sq_p, c_p = p[..., 0], p[..., 1], p[..., 2:]
    d = (
        torch.einsum("qws,rws->qr", sq_q, called_p)
        + torch.einsum("qws,rws->qr", called_q, sq_p)
        - 2 * torch.einsum("qwsa,rwsa->qr", c_q, c_p)
    )
    d[torch.arange(len(own)), own] = torch.inf  # never itself
    tie = rows.double() / (rows.max() + 1)  # deterministic order of ties
    return (d.double() + 1e-9 * tie[None]).topk(top, largest=False).indices


def recall(masked, queries, k, top, block, search: SearchConfig, seed: int = 0):
    """Mean share of the exact ``top`` nearest found in the shortlist of ``k``."""
    panel = PanelGenotypes.from_genotypes(masked)
    typed = ((panel.genotype >= 0).float().mean(0) >= 0.5).numpy()
    rng = np.random.default_rng(seed)
    rows = torch.from_numpy(np.sort(rng.choice(len(panel.ids), queries, False)))
    found, total = 0, 0
    chrom = masked.markers.chrom
    edges = np.flatnonzero(np.diff(chrom)) + 1
    for lo, hi in zip(np.r_[0, edges], np.r_[edges, len(chrom)], strict=True):
        side = ShortlistPanel.build(panel, lo, hi, block, typed, search, panel.ids)
        pw = torch.where(side.genotype < 0, side.n_genotypes, side.genotype.long())
        qw = padded_windows(panel.genotype[rows], lo, hi, block).long()
        qw = torch.where(qw < 0, side.n_genotypes, qw)
        flat = padded_windows(panel.genotype[rows], lo, hi, block).long()
        flat = flat.view(len(rows), -1)
        for seg in range(len(side.index.markers)):
            cands = side.index.search(seg, flat, panel.ids[rows], k)
            w_lo = seg * search.segment
            w_hi = min(pw.shape[1], w_lo + search.segment)
            near = exact_neighbours(
                qw,
                pw,
                side.features,
                torch.arange(len(panel.ids)),
                w_lo,
                w_hi,
                top,
                rows,
            )
            hit = (near[:, :, None] == cands[:, None, :]).any(-1)
            found += int(hit.sum())
            total += hit.numel()
    return found / total


def scaling(sizes, n_markers: int, targets: int, k: int) -> None:
    """Seconds of one no-grad copy of ``targets`` individuals from panels of each
    size (founder mosaics of ``formats_scale.py``, one chromosome): exact full
    attention against the shortlist of ``k``."""
    from formats_scale import founder_calls

    from gperceiver.nn.panel import PanelAttention

    calls = founder_calls(np.random.default_rng(0), max(sizes), n_markers)
    dose = calls.astype(np.int16).sum(-1).T  # (N, M): ALT copies, -1 / -2 missing
    genotype = torch.from_numpy(np.where((calls < 0).any(-1).T, -1, dose))
    ids = torch.arange(max(sizes), dtype=torch.int64) * 7919 + 1
    chrom = np.zeros(n_markers, int)
    for n in sizes:
        panel = PanelGenotypes(genotype[:n].to(torch.int16), ids[:n], 2, 2)
        query = panel.subset(np.arange(targets))
        line = f"panel {n} x {n_markers}, {targets} targets:"
        for name, config in (
            ("full", PanelConfig(shortlist=n)),
            (f"shortlist {k}", PanelConfig(shortlist=k)),
        ):
            model = PanelAttention(config)
            t, c = time.perf_counter(), cpu_seconds()
            with torch.no_grad():
                model(query, panel, chrom)
            line += f" {name} {time.perf_counter() - t:.2f} s ({cpu_seconds() - c:.2f}"
            line += " CPU-s);"
        c = cpu_seconds()
        typed = np.ones(n_markers, bool)
        ShortlistPanel.build(panel, 0, n_markers, 32, typed, SearchConfig(), panel.ids)
        line += f" of which the index {cpu_seconds() - c:.2f} CPU-s;"
        print(line + f" load {os.getloadavg()[0]:.1f}", flush=True)


def founder_panel(n: int, n_markers: int) -> PanelGenotypes:
    """Founder mosaics of ``formats_scale.py`` as genotype indices (ALT copies)."""
    from formats_scale import founder_calls

    calls = founder_calls(np.random.default_rng(0), n, n_markers)
    dose = calls.astype(np.int16).sum(-1).T  # (N, M): ALT copies, -1 / -2 missing
    genotype = torch.from_numpy(np.where((calls < 0).any(-1).T, -1, dose))
    ids = torch.arange(n, dtype=torch.int64) * 7919 + 1
    return PanelGenotypes(genotype.to(torch.int16), ids, 2, 2)


def reuse(n: int, n_markers: int, k: int, chunk: int = 256) -> None:
    """CPU seconds to copy all ``n`` individuals from the others in chunks of
    ``chunk``: the candidate index rebuilt per chunk vs built once."""
    from gperceiver.nn.panel import PanelAttention

    panel = founder_panel(n, n_markers)
    chrom, typed = np.zeros(n_markers, int), np.ones(n_markers, bool)
    model = PanelAttention(PanelConfig(shortlist=k))
    chunks = [np.arange(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    with torch.no_grad():
        c = cpu_seconds()
        per_chunk = [model(panel.subset(r), panel, chrom, typed=typed) for r in chunks]
        rebuilt = cpu_seconds() - c
        c = cpu_seconds()
        side = model.prepare(panel, 0, n_markers, 32, typed)
        built = cpu_seconds() - c
        once = [
            model.copy_span(panel.subset(r), side, 0, n_markers, 32) for r in chunks
        ]
        reused = cpu_seconds() - c
    same = all(torch.equal(a, b) for a, b in zip(per_chunk, once, strict=True))
    print(
        f"{n} x {n_markers}, shortlist {k}, {len(chunks)} chunks of {chunk}: index "
        f"rebuilt per chunk {rebuilt:.1f} CPU-s, built once {reused:.1f} CPU-s (of "
        f"which the build {built:.1f}); outputs identical: {same}; "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir")
    parser.add_argument("--shortlist", default="64,128,1024")
    parser.add_argument("--top", type=int, default=16)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--no-impute", action="store_true")
    parser.add_argument("--scaling", help="panel sizes, e.g. 1000,2000,4000")
    parser.add_argument("--reuse", type=int, help="individuals: index reuse timing")
    parser.add_argument("--markers", type=int, default=2048)
    parser.add_argument("--tables", type=int, default=PanelConfig().hash_tables)
    parser.add_argument("--key-markers", type=int, default=PanelConfig().key_markers)
    parser.add_argument("--segment", type=int, default=PanelConfig().segment)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.reuse:
        reuse(args.reuse, args.markers, int(args.shortlist.split(",")[0]))
        return
    if args.scaling:
        sizes = [int(x) for x in args.scaling.split(",")]
        scaling(sizes, args.markers, args.queries, int(args.shortlist.split(",")[0]))
        return
    truth, masked, hidden = load(args.workdir)
    print(f"{masked.n_individuals} x {masked.n_markers}, load {os.getloadavg()[0]:.1f}")
    block = PanelConfig().block
    search = SearchConfig(args.tables, args.key_markers, args.segment)
    for k in [int(x) for x in args.shortlist.split(",")]:
        t = time.perf_counter()
        r = recall(masked, args.queries, k, min(args.top, k), block, search)
        line = f"k={k}: recall of the exact top {min(args.top, k)} {r:.4f}"
        line += f" ({time.perf_counter() - t:.1f} s)"
        print(line, flush=True)
        if not args.no_impute:
            settings = PanelImputeSettings()
            model = replace(
                settings.model,
                shortlist=k,
                hash_tables=args.tables,
                key_markers=args.key_markers,
                segment=args.segment,
            )
            settings = replace(settings, model=model)
            t, c = time.perf_counter(), cpu_seconds()
            result = impute_with_panel(masked, settings=settings)
            seconds, cpu = time.perf_counter() - t, cpu_seconds() - c
            same = (
                np.sort(result.genotypes.alleles, -1) == np.sort(truth.alleles, -1)
            ).all(-1)
            conc = same.reshape(-1)[hidden].mean()
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(
                f"k={k}: concordance {conc:.4f}, wall {seconds:.1f} s, CPU {cpu:.1f} s"
                f", load {os.getloadavg()[0]:.1f}, peak RSS so far {rss:.2f} GiB",
                flush=True,
            )


if __name__ == "__main__":
    main()
