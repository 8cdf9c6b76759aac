"""Cost of the marker graph at scale: the LD graph from random genotypes and two
graph-attention layers (width 64, 4 heads) on an (M, D) table, one training step
(forward + backward) and one inference pass.

    OMP_NUM_THREADS=1 python benchmarks/graph_cost.py --markers 100000 \\
        --individuals 400
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from gperceiver.data import Genotypes, MarkerMap
from gperceiver.marker_graph import GraphSettings, ld_graph
from gperceiver.nn.graph_attention import GraphAttention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markers", type=int, default=100_000)
    parser.add_argument("--individuals", type=int, default=400)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    m, n = args.markers, args.individuals
    alleles = rng.integers(1, 3, (n, m, 2), dtype=np.uint8)
    alleles.sort(-1)
    markers, _ = MarkerMap.from_columns(
        ["1"] * m, [f"m{i}" for i in range(m)], range(m)
    )
    genotypes = Genotypes(alleles, np.array([f"i{i}" for i in range(n)]), markers, 2)
    started = time.perf_counter()
    # random genotypes have r² near 0: keep every candidate to get k edges each
    graph = ld_graph(genotypes, np.arange(n), min_r2=0.0)
    ld_s = time.perf_counter() - started
    src, dst = torch.from_numpy(graph.src), torch.from_numpy(graph.dst)
    weight = torch.from_numpy(graph.weight).clamp(min=1e-3)
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(GraphAttention(args.width, 4) for _ in range(2))
    table = torch.randn(m, args.width, requires_grad=True)

    def refine():
        out = table
        for layer in layers:
            out = layer(out, src, dst, weight)
        return out

    started = time.perf_counter()
    refine().square().mean().backward()
    train_s = time.perf_counter() - started
    with torch.no_grad():
        started = time.perf_counter()
        refine()
        infer_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"markers {m}, individuals {n}, edges {len(graph)} "
        f"(window {GraphSettings.ld_window}, k {GraphSettings.ld_neighbours}): "
        f"LD graph {ld_s:.1f} s; 2 graph layers: training step {train_s:.1f} s, "
        f"inference {infer_s:.1f} s; peak RSS {peak:.2f} GB"
    )


if __name__ == "__main__":
    main()
