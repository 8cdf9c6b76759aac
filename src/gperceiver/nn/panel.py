"""Attention across individuals: a query copies the genotypes of a panel.

Shape letters: Q query individuals, R panel (reference) individuals, M markers,
S markers of one window, W windows of a chromosome, H heads, K candidates per
window, G complete genotypes (every multiset of P real alleles), A real alleles.

Markers are grouped into windows of ``block`` consecutive markers within a
chromosome. For a query and a window, the distance to a panel individual is the
squared difference of allele-copy counts summed over the loci both have called
(a missing or hidden query locus, and a missing panel locus, count for nothing).
Each head mixes the distances of the window and its ``radius`` neighbours on
either side with its own taps (mixing along markers: a longer shared stretch
counts), scales them by its inverse temperature, and the softmax over the panel
(self excluded) weighs how much of each panel individual's genotype is copied at
every marker of the window. The copy at a marker is renormalised over the panel
individuals called there and blended with the panel's genotype frequencies
(without the query's own genotypes).

A second layer re-estimates the distances with the query's copied genotypes in
place of its hidden loci (the expected squared difference under the first copy),
as an EM pass would. Panel genotypes are never updated, so a query's hidden loci
are never read back through another individual's copy of them.

Cost: with a panel of at most ``K = shortlist`` individuals, exact full
attention: the distances are one matmul pass per window, ``Q x R x S x (A + 2)``
multiply-adds. A larger panel is read through candidates
(:mod:`gperceiver.nn.panel_shortlist`): per segment of windows the ``K`` panel
individuals found by hashed identity by state (:mod:`gperceiver.nn.candidates`),
``O(Q x K x M x (A + 2))`` in all, linear in the individuals. The panel is held
as one int16 genotype index per locus.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gperceiver.data import MISSING, Genotypes, allele_decoder
from gperceiver.nn.candidates import SearchConfig
from gperceiver.nn.embeddings import count_targets
from gperceiver.nn.panel_shortlist import (
    ShortlistPanel,
    padded_windows,
    query_features,
    self_rows,
    shortlist_layer,
)
from gperceiver.nn.window_mixing import mix_along_windows


@dataclass(frozen=True)
class PanelConfig:
    # markers per window, and per head the neighbouring windows each side whose
    # distances it mixes in (a triangle at first): stretches of ~100, ~300 and
    # ~800 markers. On chromosome 1 of the 1,000 x 20,000 msprime set (fitted):
    # block 16 radius 4 alone 0.9885 concordance, (2, 8) 0.9894, block 32
    # (1, 4) 0.9895, (1, 4, 12) 0.9898 (0.9900 with 80 fitting steps)
    block: int = 32
    head_radii: tuple[int, ...] = (1, 4, 12)
    inverse_temperature: float = 2.0  # initial scale of the distances (per copy)
    # candidates per segment of windows (hashed identity by state, see
    # nn/candidates.py); a panel of at most this many is read whole
    shortlist: int = 1024
    hash_tables: int = 128  # per segment
    key_markers: int = 8  # loci per hash key
    segment: int = 16  # windows sharing one candidate list
    search_seed: int = 0  # which loci the keys use
    # > 1: EM passes with the query's first copies filled in. On a fresh msprime
    # set (1,000 x 2,500, simulation seed 7, not the benchmark's): 1 layer 0.9894
    # concordance in 17 s, 2 layers 0.9906 in 27 s, 3 layers 0.9908 in 39 s
    layers: int = 2
    prior_weight: float = 0.01  # initial weight of the panel frequencies per copy

    def __post_init__(self):
        if min(self.block, self.shortlist, self.hash_tables, self.segment) < 1:
            raise ValueError("block, shortlist, hash_tables, segment must be >= 1")
        if not self.head_radii or min(self.head_radii) < 0:
            raise ValueError(f"head_radii {self.head_radii}: give radii >= 0")
        if self.layers < 1:
            raise ValueError("layers must be >= 1")


def complete_table(ploidy: int, n_alleles: int) -> np.ndarray:
    """Allele ids ``(G, P)`` of every genotype without a missing copy."""
    table = allele_decoder(ploidy, n_alleles)
    return table[(table != MISSING).all(1)]


def name_ids(names) -> Tensor:
    """A stable 63-bit identity per name ``(N,)`` int64 (self exclusion, ties)."""
    out = [
        int.from_bytes(hashlib.blake2b(str(n).encode(), digest_size=8).digest(), "big")
        >> 1
        for n in np.asarray(names).tolist()
    ]
    return torch.tensor(out, dtype=torch.int64)


@dataclass
class PanelGenotypes:
    """Individuals as complete-genotype indices: ``genotype`` (N, M) int16, -1 where
    any copy is missing (or hidden); ``ids`` (N,) int64 identities."""

    genotype: Tensor
    ids: Tensor
    ploidy: int
    n_alleles: int

    @classmethod
    def from_genotypes(cls, genotypes: Genotypes, rows=None) -> PanelGenotypes:
        g = genotypes if rows is None else genotypes.subset(individuals=rows)
        table = complete_table(g.ploidy, g.n_alleles)
        lookup = {tuple(r): i for i, r in enumerate(table.tolist())}
        codes = g.codes()
        full = allele_decoder(g.ploidy, g.n_alleles)
        code_to_g = np.array(
            [lookup.get(tuple(r), -1) for r in full.tolist()], dtype=np.int16
        )
        return cls(
            torch.from_numpy(code_to_g[codes]), name_ids(g.names), g.ploidy, g.n_alleles
        )

    def subset(self, rows) -> PanelGenotypes:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return PanelGenotypes(
            self.genotype[rows], self.ids[rows], self.ploidy, self.n_alleles
        )

    def hide(self, hidden: Tensor) -> PanelGenotypes:
        """A copy with the loci of ``hidden`` (N, M) bool set to missing."""
        return PanelGenotypes(
            self.genotype.masked_fill(hidden, -1), self.ids, self.ploidy, self.n_alleles
        )

    def counts_table(self) -> Tensor:
        """Copy counts ``(G, A)`` float of every complete genotype."""
        table = torch.from_numpy(complete_table(self.ploidy, self.n_alleles))
        return count_targets(table.long(), self.n_alleles).float()


def _padded(genotype: Tensor, lo: int, hi: int, block: int) -> Tensor:
    """Markers ``lo:hi`` of ``genotype`` (N, M) as ``(N, W, S)`` windows, the last
    one padded with missing loci."""
    part = genotype[:, lo:hi].long()
    n_w = -(-(hi - lo) // block)
    pad = n_w * block - (hi - lo)
    if pad:
        part = nn.functional.pad(part, (0, pad), value=-1)
    return part.view(part.shape[0], n_w, block)


@dataclass
class PanelWindows:
    """The panel on one chromosome, laid out for the matmuls of every query chunk:
    ``features`` (W, S * (A + 2), R) = [called, squared norm, copy counts] per
    locus, ``onehot`` (W, R, S * G) the called genotypes, ``counts`` (W, S * G)
    their sum over the panel, ``ids`` (R,)."""

    features: Tensor
    onehot: Tensor
    counts: Tensor
    ids: Tensor
    n_genotypes: int

    @classmethod
    def build(cls, panel: PanelGenotypes, lo: int, hi: int, block: int):
        g = _padded(panel.genotype, lo, hi, block)  # (R, W, S)
        table = panel.counts_table()  # (G, A)
        called = (g >= 0).float()
        counts = table[g.clamp(min=0)] * called[..., None]  # (R, W, S, A)
        feats = torch.cat([called[..., None], (counts**2).sum(-1, True), counts], -1)
        r, w, s = g.shape
        onehot = nn.functional.one_hot(g.clamp(min=0), table.shape[0]).float()
        onehot = (onehot * called[..., None]).view(r, w, -1).transpose(0, 1)
        onehot = onehot.contiguous()
        return cls(
            feats.view(r, w, -1).permute(1, 2, 0).contiguous(),
            onehot,
            onehot.sum(1),
            panel.ids,
            table.shape[0],
        )

    def distance(self, query: QueryState) -> Tensor:
        """Summed squared copy-count difference ``(W, Q, R)`` per window over the
        loci both have (the query's weighted by ``query.weight``)."""
        w = query.weight  # (Q, W, S)
        qc = query.counts * w[..., None]  # (Q, W, S, A)
        feats = torch.cat([(w * query.sq)[..., None], w[..., None], -2 * qc], -1)
        q, n_w = w.shape[:2]
        d = torch.bmm(feats.view(q, n_w, -1).transpose(0, 1), self.features)
        return d.clamp_(min=0)  # (W, Q, R)


@dataclass
class QueryState:
    """What a layer matches on, in windows (Q, W, S): expected copy counts
    ``counts`` (Q, W, S, A), expected squared norm ``sq``, the weight of each locus
    ``weight`` (1 called, 0 missing or hidden) and identities ``ids`` (Q,)."""

    counts: Tensor
    sq: Tensor
    weight: Tensor
    ids: Tensor

    @classmethod
    def observed(cls, genotype: Tensor, table: Tensor, ids: Tensor) -> QueryState:
        """From windowed genotype indices (Q, W, S), -1 missing or hidden."""
        called = genotype >= 0
        counts = table[genotype.clamp(min=0)] * called[..., None]
        return cls(counts, (counts**2).sum(-1), called.float(), ids)

    @classmethod
    def filled(cls, genotype: Tensor, table: Tensor, ids: Tensor, probs: Tensor):
        """Called loci as they are, the others at their expectation under ``probs``
        (Q, W, S, G): the E step of an EM pass (gradients flow through it)."""
        called = (genotype >= 0)[..., None]
        onehot = nn.functional.one_hot(genotype.clamp(min=0), table.shape[0]).float()
        p = torch.where(called, onehot, probs)
        weight = torch.ones(genotype.shape)
        return cls(p @ table, p @ (table**2).sum(-1), weight, ids)


class PanelLayer(nn.Module):
    """One copy step: per-window distances -> per-head weights -> copied genotypes.

    Learned: per head the taps mixing neighbouring windows ``(2 r_h + 1,)``
    (triangles at first), the log inverse temperature ``(H,)``, the head mixture
    ``(H,)`` and the log weight of the panel frequencies. The heads' weights are
    mixed before the copy, so one copy serves every head.
    """

    def __init__(self, config: PanelConfig):
        super().__init__()
        self.config = config
        self.taps = nn.ParameterList(
            nn.Parameter((1 - torch.arange(-r, r + 1).abs() / (r + 1)).float())
            for r in config.head_radii
        )
        h = len(config.head_radii)
        self.log_scale = nn.Parameter(
            torch.full((h,), float(np.log(config.inverse_temperature)))
        )
        self.head_logits = nn.Parameter(torch.zeros(h))
        self.log_prior = nn.Parameter(torch.tensor(float(np.log(config.prior_weight))))

    def weights(self, distance: Tensor, self_pairs: tuple) -> Tensor:
        """Copy weights ``(W, Q, R)`` over the whole panel from distances
        ``(W, Q, R)``; ``self_pairs`` (query rows, panel rows) are the query
        itself, never a candidate."""
        mix = torch.softmax(self.head_logits, 0)
        alpha = 0
        for h, taps in enumerate(self.taps):
            logits = mix_along_windows(distance, -self.log_scale[h].exp() * taps)
            logits[:, self_pairs[0], self_pairs[1]] = -torch.inf
            weights = torch.softmax(logits, -1)  # over the panel
            if len(self_pairs[0]) and distance.shape[-1] == 1:
                weights = weights.nan_to_num(0.0)  # the panel is the query alone
            alpha = alpha + mix[h] * weights if len(self.taps) > 1 else weights
        return alpha

    def forward(self, query: QueryState, panel: PanelWindows) -> Tensor:
        """Genotype probabilities ``(Q, W, S, G)`` copied from ``panel``, blended
        with weight ``exp(log_prior)`` with the genotype frequencies of the panel
        without the query (the fallback where no candidate is called)."""
        self_pairs = tuple(torch.nonzero(query.ids[:, None] == panel.ids[None, :]).T)
        alpha = self.weights(panel.distance(query), self_pairs)
        num = torch.bmm(alpha, panel.onehot)  # (W, Q, S * G)
        n_w, q, _ = num.shape
        num = num.view(n_w, q, -1, panel.n_genotypes)
        den = num.sum(-1, keepdim=True)  # weight of the candidates called there
        prior = self.log_prior.exp()
        probs = (num + prior * leave_self_out(panel, self_pairs, q)) / (den + prior)
        return probs.transpose(0, 1)  # (Q, W, S, G)


def leave_self_out(panel: PanelWindows, self_pairs, q: int, pseudo: float = 0.5):
    """Genotype frequencies ``(W, Q, S, G)`` among the panel's calls without each
    query, with ``pseudo`` counts each (no genotype gets 0)."""
    counts = panel.counts[:, None].repeat(1, q, 1)  # (W, Q, S * G)
    if len(self_pairs[0]):
        counts[:, self_pairs[0]] -= panel.onehot[:, self_pairs[1]]
    counts = counts.view(*counts.shape[:2], -1, panel.n_genotypes) + pseudo
    return counts / counts.sum(-1, keepdim=True)


class PanelAttention(nn.Module):
    """Stacked :class:`PanelLayer` s: the query's genotype probabilities ``(Q, M, G)``
    copied from a panel, each layer after the first matching on the previous copy.

    The module reads genotypes only; a query is never its own candidate (same
    ``ids``), and the panel is read as given, so callers decide who is in it (the
    other training individuals in pretraining, the reference in imputation).
    """

    def __init__(self, config: PanelConfig | None = None):
        super().__init__()
        self.config = config or PanelConfig()
        self.layers = nn.ModuleList(
            PanelLayer(self.config) for _ in range(self.config.layers)
        )

    def forward(
        self,
        query: PanelGenotypes,
        panel: PanelGenotypes,
        chrom: np.ndarray,
        chunk: int | None = None,
        block: int | None = None,
        typed: np.ndarray | None = None,
    ) -> Tensor:
        """``chrom`` (M,): the chromosome of each marker (a sorted map); ``chunk``
        queries at a time (default: a few tens of millions of distances per
        chunk); ``block`` overrides the config's window size; ``typed`` (M,) bool,
        the markers a shortlist's hash keys may use (default: those called in at
        least half the queries). A panel of at most ``shortlist`` individuals is
        read whole (exact full attention), a larger one through candidates."""
        block = block or self.config.block
        if typed is None:
            typed = ((query.genotype >= 0).float().mean(0) >= 0.5).numpy()
        out = []
        for lo, hi in chromosome_spans(chrom):
            side = self.prepare(panel, lo, hi, block, typed)
            out.append(self.copy_span(query, side, lo, hi, block, chunk))
        return torch.cat(out, dim=1)

    def prepare(self, panel, lo, hi, block, typed, salt=None, window_offset=0):
        """The panel on markers ``lo:hi`` of one chromosome laid out for copying
        (full-attention windows, or the candidate index of a panel larger than
        ``shortlist``): built once, read by every query chunk and layer.

        ``salt`` (default ``lo``) and ``window_offset`` place a stretch read on its
        own within its chromosome: ``salt`` the chromosome's first marker,
        ``window_offset`` the stretch's first window (a whole segment), so that the
        stretch hashes as the whole chromosome does there.
        """
        if len(panel.ids) <= self.config.shortlist:
            return PanelWindows.build(panel, lo, hi, block)
        c = self.config
        search = SearchConfig(c.hash_tables, c.key_markers, c.segment, c.search_seed)
        return ShortlistPanel.build(
            panel, lo, hi, block, typed, search, panel.ids, salt, window_offset
        )

    def copy_span(self, query, side, lo, hi, block, chunk=None) -> Tensor:
        """Genotype probabilities ``(Q, hi - lo, G)`` of ``query`` on markers
        ``lo:hi`` copied from ``side`` (:meth:`prepare` of the same markers);
        ``chunk`` queries at a time (default :func:`query_chunk`)."""
        if isinstance(side, PanelWindows):
            return self._full(query, side, lo, hi, block, chunk)
        return self._shortlist(query, side, lo, hi, block, chunk)

    def _layers(self, g: Tensor, table: Tensor, ids: Tensor, copy) -> Tensor:
        """Every layer on windowed query genotypes ``g`` (Q, W, S); ``copy(state)``
        is one layer's copy. Returns ``(Q, W, S, G)``."""
        state, probs = QueryState.observed(g, table, ids), None
        for layer in self.layers:
            if probs is not None:
                state = QueryState.filled(g, table, ids, probs)
            probs = copy(layer, state)
        return probs

    def _full(self, query, side, lo, hi, block, chunk) -> Tensor:
        """Exact attention over the whole panel on markers ``lo:hi``."""
        table = query.counts_table()
        n_w = side.features.shape[0]
        size = chunk or query_chunk(
            self.config, len(side.ids), n_w, block, query.n_alleles
        )
        parts = []
        for start in range(0, len(query.ids), size):
            rows = slice(start, start + size)
            g = _padded(query.genotype[rows], lo, hi, block)
            probs = self._layers(g, table, query.ids[rows], lambda m, st: m(st, side))
            parts.append(probs.flatten(1, 2)[:, : hi - lo])
        return torch.cat(parts)

    def _shortlist(self, query, side, lo, hi, block, chunk) -> Tensor:
        """Attention over each segment's ``shortlist`` candidates on ``lo:hi``."""
        c = self.config
        table = query.counts_table()
        n_w = side.genotype.shape[1]
        size = chunk or query_chunk(c, len(side.ids), n_w, block, query.n_alleles)
        n_seg = len(side.index.markers)
        parts = []
        for start in range(0, len(query.ids), size):
            rows = slice(start, start + size)
            ids = query.ids[rows]
            g = padded_windows(query.genotype[rows], lo, hi, block).long()
            flat = g.view(g.shape[0], -1)
            cands = [side.index.search(s, flat, ids, c.shortlist) for s in range(n_seg)]
            own = self_rows(ids, side.ids)

            def copy(layer, state, cands=cands, own=own):
                feats = query_features(state.counts, state.sq, state.weight)
                return shortlist_layer(layer, feats, side, cands, own, c.segment)

            probs = self._layers(g, table, ids, copy)
            parts.append(probs.flatten(1, 2)[:, : hi - lo])
        return torch.cat(parts)


def query_chunk(
    config: PanelConfig, n_panel: int, n_windows: int, block: int, n_alleles: int
) -> int:
    """Queries copied at a time: 32 Mi distances (full attention over ``n_panel``
    individuals and ``n_windows`` windows), or 16 Mi candidate features of the
    shortlist (the segment and its neighbours' ``block``-marker windows, times
    ``shortlist`` candidates, times ``n_alleles + 2``)."""
    if n_panel <= config.shortlist:
        return max(1, (32 << 20) // max(1, n_panel * n_windows))
    reach = 2 * max(config.head_radii) + config.segment
    per_query = config.shortlist * reach * block * (n_alleles + 2)
    return max(1, (16 << 20) // per_query)


def chromosome_spans(chrom: np.ndarray) -> list[tuple[int, int]]:
    """``(lo, hi)`` marker ranges of the chromosomes of a sorted map."""
    edges = np.flatnonzero(np.diff(np.asarray(chrom))) + 1
    lows, highs = np.r_[0, edges], np.r_[edges, len(chrom)]
    return [(int(a), int(b)) for a, b in zip(lows, highs, strict=True)]


def genotype_frequencies(panel: PanelGenotypes, pseudo: float = 0.5) -> Tensor:
    """Frequency ``(M, G)`` of each complete genotype among the panel's calls,
    with ``pseudo`` counts each (no marker gets a zero)."""
    g = panel.genotype.long()
    n_g = panel.counts_table().shape[0]
    counts = torch.zeros(g.shape[1], n_g)
    for start in range(0, g.shape[0], 256):
        part = g[start : start + 256]
        onehot = torch.nn.functional.one_hot(part.clamp(min=0), n_g).float()
        counts += (onehot * (part >= 0)[..., None]).sum(0)
    counts += pseudo
    return counts / counts.sum(1, keepdim=True)
