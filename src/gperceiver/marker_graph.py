"""Marker graphs (linkage disequilibrium or a user's edge list) and marker
annotations: what a model may know about markers besides their positions.

Shape letters: N individuals, M markers, P ploidy, W window (markers on each side),
C markers in one chunk, E edges.

The LD graph links each marker to the ``ld_neighbours`` markers of its chromosome
within ``ld_window`` markers on either side that have the highest r² with it (at
least ``ld_min_r2``). r² is computed from the *training* individuals only, in
chunks of markers, so time is O(N * M * W) and memory O(M * W), never O(M²).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import MISSING, Genotypes, MarkerAnnotations, MarkerGraph, MarkerInputs
from .io import InputError
from .io.marker_files import LD, require_read


@dataclass
class GraphSettings:
    """Where a model's marker graph and annotations come from (``--params`` keys)."""

    # None: no graph; "ld": linkage disequilibrium among the training individuals;
    # otherwise a TSV edge list ``marker_a, marker_b, weight`` (genes, pathways)
    marker_graph: str | None = None
    # LD is local: 25 markers each side covers the extent of strong LD on dense
    # panels while keeping the r² computation at O(N * M * 25)
    ld_window: int = 25
    # k: in-edges per marker; the graph layers' cost and memory grow with M * k
    ld_neighbours: int = 8
    # pairs below this r² carry little shared information and are left out
    ld_min_r2: float = 0.1
    # None, or a TSV ``marker, <numeric or categorical columns>``
    annotations: str | None = None

    def __post_init__(self):
        if self.ld_window < 1 or self.ld_neighbours < 1:
            raise ValueError("ld_window and ld_neighbours must be positive")
        if not 0.0 <= self.ld_min_r2 <= 1.0:
            raise ValueError(f"ld_min_r2 must be in [0, 1], got {self.ld_min_r2}")


def _row_blocks(alleles, rows: np.ndarray):
    """Per block of ``rows`` (sorted), a function giving their alleles at markers
    ``a..b-1`` (S, b - a, P). A streamed store is read once per sample block."""
    size = getattr(alleles, "block_samples", 1024)
    for block in np.split(rows, np.flatnonzero(np.diff(rows // size)) + 1):
        if isinstance(alleles, np.ndarray):
            yield lambda a, b, block=block: alleles[block, a:b]
        else:  # (S, M, P) of one sample block: the store decodes it whole anyway
            part = alleles[block]
            yield lambda a, b, part=part: part[:, a:b]


def _dosage(part: np.ndarray, allele: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of each marker's ``allele`` (C,) in ``part`` (S, C, P): (S, C) float64
    (0 where missing) and called (S, C) bool."""
    called = (part != MISSING).all(-1)
    copies = (part == allele[None, :, None]).sum(-1)
    return np.where(called, copies, 0).astype(np.float64), called


def ld_scores(genotypes: Genotypes, rows, window: int, chunk: int = 256) -> np.ndarray:
    """Correlation r of each marker with the next ``window`` markers, ``(M, W)``.

    Entry ``[i, d - 1]`` is r between markers ``i`` and ``i + d`` (NaN past the
    end of the map) over the individuals ``rows``; chromosomes are not looked at
    here. Each marker is scored by its dosage of its most frequent allele among
    ``rows`` (for biallelic markers r² does not depend on the allele; for
    multi-allelic ones the major allele carries the largest contrast),
    standardised over its called copies; missing entries count as the mean. A
    constant marker has r = 0 with all.
    """
    alleles = genotypes.alleles
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if not len(rows):
        raise ValueError("no individual to compute LD from")
    m, n_alleles = genotypes.n_markers, genotypes.n_alleles
    n_called = np.zeros(m)
    total = np.zeros((n_alleles, m))  # per allele id 1..A: sums of its dosage
    squares = np.zeros((n_alleles, m))
    for read in _row_blocks(alleles, rows):  # pass 1: every allele's mean and sd
        for start in range(0, m, 8 * chunk):
            stop = min(start + 8 * chunk, m)
            part = read(start, stop)
            for a in range(n_alleles):
                allele = np.full(stop - start, a + 1)
                dosage, called = _dosage(part, allele)
                total[a, start:stop] += dosage.sum(0)
                squares[a, start:stop] += (dosage**2).sum(0)
            n_called[start:stop] += called.sum(0)
    major = total.argmax(0)  # (M,) index of the most frequent allele
    markers = np.arange(m)
    mean = total[major, markers] / np.maximum(n_called, 1)
    sd = squares[major, markers] / np.maximum(n_called, 1) - mean**2
    sd = np.sqrt(np.maximum(sd, 0.0))
    scale = np.where(sd > 1e-6, 1.0 / np.where(sd > 1e-6, sd, 1.0), 0.0)
    major += 1  # allele ids
    band = np.zeros((m, window))  # pass 2: sums of z_i z_{i+d}
    local = np.arange(chunk)[:, None]
    offsets = np.arange(1, window + 1)[None, :]
    for read in _row_blocks(alleles, rows):
        for start in range(0, m, chunk):
            stop, end = min(start + chunk, m), min(start + chunk + window, m)
            dosage, called = _dosage(read(start, end), major[start:end])
            # float64: r² on a threshold must not depend on how rows are blocked
            z = np.where(called, (dosage - mean[start:end]) * scale[start:end], 0.0)
            products = z[:, : stop - start].T @ z  # (C, C + W)
            cols = local[: stop - start] + offsets  # (C, W)
            inside = cols < end - start
            band[start:stop] += np.where(
                inside,
                products[local[: stop - start], np.minimum(cols, end - start - 1)],
                0.0,
            )
    r = band / len(rows)
    r[np.arange(m)[:, None] + offsets >= m] = np.nan
    return r


def ld_graph(
    genotypes: Genotypes,
    rows,
    window: int = GraphSettings.ld_window,
    neighbours: int = GraphSettings.ld_neighbours,
    min_r2: float = GraphSettings.ld_min_r2,
    chunk: int = 4096,
) -> MarkerGraph:
    """The LD graph over the individuals ``rows`` (training individuals only).

    Marker i reads the (at most) ``neighbours`` markers j of its chromosome with
    ``|i - j| <= window`` and the highest r² >= ``min_r2`` (weight r²); ties go to
    the nearer marker, then the one on the left.
    """
    r = ld_scores(genotypes, rows, window)
    r2 = np.minimum(r**2, 1.0)
    m, chrom = genotypes.n_markers, genotypes.markers.chrom
    # candidates ordered by distance, left first: -1, +1, -2, +2, ...
    offsets = np.stack([-np.arange(1, window + 1), np.arange(1, window + 1)], 1).ravel()
    k = min(neighbours, len(offsets))
    src, dst, weight = [], [], []
    for start in range(0, m, chunk):
        i = np.arange(start, min(start + chunk, m))[:, None]  # (C, 1)
        j = i + offsets  # (C, 2W)
        inside = (j >= 0) & (j < m)
        jc = np.clip(j, 0, m - 1)
        # r² of (i, j) sits in the row of the left one at distance |i - j|
        left = np.minimum(i, jc)
        scores = r2[left, np.abs(offsets) - 1]
        # discrete data can put r² exactly on the threshold: rounding must not decide
        ok = inside & (chrom[jc] == chrom[i]) & (scores >= min_r2 - 1e-9)
        scores = np.where(ok & ~np.isnan(scores), scores, -1.0)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (C, k)
        chosen = np.take_along_axis(scores, best, 1)
        keep = chosen >= 0
        src.append(np.take_along_axis(jc, best, 1)[keep])
        dst.append(np.broadcast_to(i, best.shape)[keep])
        weight.append(chosen[keep])
    return MarkerGraph(np.concatenate(src), np.concatenate(dst), np.concatenate(weight))


def graph_and_annotations(
    settings: GraphSettings,
    genotypes: Genotypes,
    rows,
    given: MarkerInputs | None = None,
) -> tuple[MarkerGraph | None, MarkerAnnotations | None]:
    """The graph and annotations ``settings`` ask for: an LD graph computed from
    the individuals ``rows`` only (the training individuals of the caller), an
    edge-list graph and annotations from ``given`` (read from their files by the
    caller; :func:`gperceiver.io.read_marker_inputs`)."""
    given = given or MarkerInputs()
    graph = None
    if settings.marker_graph == LD:
        graph = ld_graph(
            genotypes,
            rows,
            settings.ld_window,
            settings.ld_neighbours,
            settings.ld_min_r2,
        )
        if not len(graph):
            raise InputError(
                "marker_graph",
                None,
                f"no marker pair within {settings.ld_window} markers reaches "
                f"r² >= {settings.ld_min_r2} among the training individuals",
                "lower ld_min_r2 or widen ld_window",
            )
    elif settings.marker_graph:
        graph = require_read(given.graph, "marker_graph", settings.marker_graph)
    annotations = None
    if settings.annotations:
        annotations = require_read(
            given.annotations, "annotations", settings.annotations
        )
    return graph, annotations


def marker_sizes(
    graph: MarkerGraph | None, annotations: MarkerAnnotations | None
) -> dict:
    """The :class:`~gperceiver.nn.perceiver.PerceiverConfig` fields they fix."""
    return {
        "n_graph_edges": 0 if graph is None else len(graph),
        "n_annotations": 0 if annotations is None else annotations.numeric.shape[1],
        "annotation_levels": () if annotations is None else annotations.levels,
    }


def attach(
    embed, graph: MarkerGraph | None, annotations: MarkerAnnotations | None
) -> None:
    """Store the graph and annotations in a model's marker embedding (buffers, so
    they are saved with it)."""
    if graph is not None:
        embed.set_graph(graph.src, graph.dst, graph.weight)
    if annotations is not None:
        embed.set_annotations(*annotations.scaled(), annotations.codes)
