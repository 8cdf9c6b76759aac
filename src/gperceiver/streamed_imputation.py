"""One-shot imputation of a VCF Zarr store by panel attention, streamed by
stretches of markers: memory bounded by a stretch, not by the cohort's markers.

Three reads of the store, each one stretch of markers (all individuals) at a time:

1. the call rate of every marker (which markers are typed, hence the window
   size, as :func:`gperceiver.imputation.impute_with_panel` decides it);
2. the fit sample: the whole store when it has at most ``fit_markers`` markers,
   else evenly spaced stretches of one fitting span each (``windows x block``
   markers) within chromosomes, ``fit_markers`` in all; the masked fit then runs
   on it as on a loaded file;
3. the copy: per chromosome, stretches of ``stream_markers`` markers (whole
   segments of windows from the chromosome's start), each read with the windows
   around it that its copy reads (``context_windows``), copied for every
   individual in chunks of targets, and appended to the output VCF (a temporary
   file, renamed when the last stretch is in).

Exactness: the window grid, the segments sharing a candidate list and their hash
keys are those of the whole chromosome (:meth:`PanelAttention.prepare` places a
stretch by ``salt`` and ``window_offset``), and the context covers every window
the copy of a core window reads, so with the same fitted model every call, DS,
GP and DR2 is the one the in-memory path writes; with a store of at most
``fit_markers`` markers the fit is the same as well.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from .data import MISSING, Genotypes, MarkerMap
from .imputation import (
    PanelImputation,
    PanelImputeSettings,
    _DoseR2,
    best_calls,
    fit_best_block,
    hold_observed,
)
from .io.imputed_vcf import write_imputed_chunks
from .nn.panel import (
    PanelConfig,
    PanelGenotypes,
    chromosome_spans,
    complete_table,
    query_chunk,
)


@dataclass(frozen=True)
class StreamSettings:
    stream_markers: int = 8192  # core markers per stretch (whole segments)
    fit_markers: int = 16384  # markers read for the masked fit
    scan_markers: int = 8192  # markers per read of the call-rate pass


def context_windows(config: PanelConfig) -> int:
    """Windows read on each side of a stretch so that its copy equals the whole
    chromosome's: every layer mixes ``max(head_radii)`` windows each side, and a
    hash key reads one neighbouring window; rounded up to whole segments (plus
    one more with several layers, whose copies feed the next layer's distances)."""
    need = config.layers * max(config.head_radii) + 1
    whole = -(-need // config.segment) * config.segment
    return whole + (config.segment if config.layers > 1 else 0)


def stretches(lo: int, hi: int, core: int, context: int) -> list[tuple]:
    """``(read_lo, core_lo, core_hi, read_hi)`` of a chromosome's markers
    ``lo:hi``: cores of ``core`` markers, reads ``context`` more each side."""
    out = []
    for c0 in range(lo, hi, core):
        c1 = min(hi, c0 + core)
        out.append((max(lo, c0 - context), c0, c1, min(hi, c1 + context)))
    return out


def call_rates(store, step: int) -> np.ndarray:
    """Share ``(M,)`` float32 of individuals with every copy called, per marker."""
    rate = np.empty(store.n_markers, np.float32)
    for lo in range(0, store.n_markers, step):
        hi = min(store.n_markers, lo + step)
        called = (store.marker_block(lo, hi).alleles != MISSING).all(-1)
        rate[lo:hi] = called.mean(0, dtype=np.float32)
    return rate


def fit_spans(chrom: np.ndarray, length: int, total: int) -> list[tuple[int, int]]:
    """Evenly spaced stretches of ``length`` markers within chromosomes, about
    ``total`` markers in all; the whole map when it has at most ``total``."""
    m = len(chrom)
    if m <= total:
        return [(0, m)]
    spans = chromosome_spans(chrom)
    out = []
    for start in np.linspace(0, m, max(1, total // length), endpoint=False):
        lo, hi = next(s for s in spans if s[0] <= start < s[1])
        a = min(int(start), max(lo, hi - length))
        span = (a, min(hi, a + length))
        if not out or span[0] >= out[-1][1]:
            out.append(span)
    return out


def fit_sample(store, spans: list[tuple[int, int]]) -> Genotypes:
    """The store on ``spans``, each its own chromosome (a fitting span never
    crosses from one into the next); the store's own map for a single span
    covering it all."""
    if spans == [(0, store.n_markers)]:
        return store.marker_block(0, store.n_markers)
    parts = [store.marker_block(lo, hi) for lo, hi in spans]
    names = np.concatenate([p.markers.names for p in parts])
    chrom = np.concatenate([np.full(p.n_markers, i) for i, p in enumerate(parts)])
    pos = np.concatenate([p.markers.pos for p in parts])
    labels = tuple(f"stretch{i + 1}" for i in range(len(parts)))
    markers = MarkerMap(names, chrom, pos, labels)
    alleles = np.concatenate([p.alleles for p in parts], axis=1)
    return Genotypes(alleles, store.names, markers, store.n_alleles)


def impute_store(
    store,
    out,
    settings: PanelImputeSettings | None = None,
    stream: StreamSettings | None = None,
    log=sys.stderr,
) -> dict:
    """Impute every missing copy of ``store`` (:class:`ZarrGenotypes`) from the
    other individuals and write the VCF/BCF ``out``; returns a summary."""
    settings, stream = settings or PanelImputeSettings(), stream or StreamSettings()
    start = time.perf_counter()
    typed = call_rates(store, stream.scan_markers) >= settings.typed_call_rate
    block = max(1, round(settings.model.block * len(typed) / max(1, typed.sum())))
    spans = fit_spans(
        store.markers.chrom, settings.fit.windows * block, stream.fit_markers
    )
    sample = fit_sample(store, spans)
    panel = PanelGenotypes.from_genotypes(sample)
    model, block, history, val = fit_best_block(
        panel, sample, None, settings, block, None, log
    )
    del sample, panel
    print(
        f"panel attention: windows of {block} markers, fitted in {len(history)} "
        f"steps on {sum(b - a for a, b in spans)} markers, validation "
        f"cross-entropy {val[0]:.4f} -> {val[1]:.4f}",
        file=log,
    )
    fitted = time.perf_counter()
    imputed = [0]
    chunks = _stretch_results(model, store, typed, block, settings, stream, imputed)
    write_imputed_chunks(chunks, store.markers, store.names, store.n_alleles, out)
    end = time.perf_counter()
    print(
        f"streamed: {fitted - start:.1f} s reading call rates and fitting, "
        f"{end - fitted:.1f} s copying and writing",
        file=log,
    )
    return {
        "block": block,
        "fit_steps": len(history),
        "fit_markers": sum(b - a for a, b in spans),
        "val_loss": val,
        "imputed": imputed[0],
        "seconds": end - start,
        "fit_seconds": fitted - start,
    }


def _stretch_results(model, store, typed, block, settings, stream, imputed):
    """``(lo, result, typed)`` per stretch, in marker order (see the module)."""
    c = model.config
    unit = c.segment * block
    core = max(1, round(stream.stream_markers / unit)) * unit
    context = context_windows(c) * block
    for clo, chi in chromosome_spans(store.markers.chrom):
        n_windows = -(-(chi - clo) // block)  # the chromosome's, as in memory
        chunk = query_chunk(c, store.n_individuals, n_windows, block, store.n_alleles)
        for a, c0, c1, b in stretches(clo, chi, core, context):
            g = store.marker_block(a, b)
            at = (clo, a, c0 - a, c1 - a)
            part = _copy_stretch(
                model, g, typed[a:b], block, (settings.chunk, chunk), at
            )
            imputed[0] += len(part.rows)
            yield c0, part, typed[c0:c1]


@torch.no_grad()
def _copy_stretch(model, g: Genotypes, typed, block, chunks, at):
    """:class:`PanelImputation` of every individual of ``g`` (the markers read) on
    its core ``k0:k1``; ``at`` = (the chromosome's first marker, the read's first
    marker, k0, k1); ``chunks`` = (targets per output chunk, queries copied at a
    time)."""
    clo, a, k0, k1 = at
    targets_chunk, query_size = chunks
    panel = PanelGenotypes.from_genotypes(g)
    offset = (a - clo) // block
    side = model.prepare(panel, 0, g.n_markers, block, typed, clo, offset)
    table = complete_table(g.ploidy, g.n_alleles)
    counts = panel.counts_table()
    filled = g.alleles[:, k0:k1].copy()
    r2 = _DoseR2(k1 - k0, counts)
    parts = []
    for start in range(0, g.n_individuals, targets_chunk):
        rows = np.arange(start, min(start + targets_chunk, g.n_individuals))
        query = panel.subset(rows)
        probs = model.copy_span(query, side, 0, g.n_markers, block, query_size)
        probs = probs[:, k0:k1]
        alleles = g.alleles[rows, k0:k1]
        probs = hold_observed(probs, alleles, panel.genotype[rows, k0:k1], counts)
        r2.add(probs)
        q_i, m_i, best = best_calls(probs, alleles)
        filled[rows[q_i], m_i] = table[best]
        parts.append((rows[q_i], m_i, probs[q_i, m_i].numpy()))
    rows, loci, probs = (np.concatenate(p) for p in zip(*parts, strict=True))
    markers = g.markers.subset(np.arange(k0, k1))
    return PanelImputation(
        Genotypes(filled, g.names, markers, g.n_alleles),
        rows,
        loci,
        probs,
        counts.long().numpy(),
        r2=r2.value(),
    )
