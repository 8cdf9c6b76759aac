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

Cost: the distances are one matmul pass per window, ``Q x R x S x (A + 2)``
multiply-adds; the copy reads ``K`` candidates per window (the ``shortlist``
highest-scoring ones) when the panel has more than ``K`` individuals, exact full
attention otherwise. Memory per query chunk is ``Q x R x (2 radius + 1)``
distances plus the ``Q x M x G`` output; the panel is held as one int16 genotype
index per locus.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gperceiver.data import MISSING, Genotypes, allele_decoder
from gperceiver.nn.embeddings import count_targets


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
    # candidates per window (best by score); every panel individual at or below
    shortlist: int = 1024
    layers: int = 1  # > 1: EM passes with the query's first copies filled in
    prior_weight: float = 0.01  # initial weight of the panel frequencies per copy

    def __post_init__(self):
        if self.block < 1 or self.shortlist < 1:
            raise ValueError("block and shortlist must be >= 1")
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


def _tie_breaker(ids: Tensor) -> Tensor:
    """A number in [0, 1) per identity: breaks ties in the shortlist by who, not
    where, so the candidates do not depend on the panel's order."""
    return ((ids % 2147483647) * 48271 % 2147483647).double().div(2147483647).float()


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
    their sum over the panel, ``ids`` / ``tie`` (R,)."""

    features: Tensor
    onehot: Tensor
    counts: Tensor
    ids: Tensor
    tie: Tensor
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
            _tie_breaker(panel.ids),
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

    def weights(self, distance: Tensor, self_pairs: tuple, tie: Tensor) -> Tensor:
        """Copy weights ``(W, Q, R)`` from distances ``(W, Q, R)``; ``self_pairs``
        (query rows, panel rows) are the query itself, never a candidate; ``tie``
        (R,) breaks equal scores in the shortlist."""
        mix = torch.softmax(self.head_logits, 0)
        alpha = 0
        for h, taps in enumerate(self.taps):
            logits = mix_along_windows(distance, -self.log_scale[h].exp() * taps)
            logits[:, self_pairs[0], self_pairs[1]] = -torch.inf
            k = self.config.shortlist
            if distance.shape[-1] > k:  # the k best candidates per query and window
                key = logits.detach() - 1e-3 * tie  # (W, Q, R)
                cut = key.topk(k, dim=-1).values[..., -1:]
                logits = logits.masked_fill(key < cut, -torch.inf)
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
        alpha = self.weights(panel.distance(query), self_pairs, panel.tie)
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


def mix_along_windows(distance: Tensor, taps: Tensor) -> Tensor:
    """``out[w] = sum_d taps[d + r] * distance[w + d]`` over ``|d| <= r``, windows
    past the chromosome's ends counting 0: (W, ...) -> (W, ...)."""
    n_w, r = distance.shape[0], (len(taps) - 1) // 2
    if not (torch.is_grad_enabled() and taps.requires_grad):
        out = torch.zeros_like(distance)  # in place: no graph to keep
        for d, tap in zip(range(-r, r + 1), taps.tolist(), strict=True):
            lo, hi = max(0, -d), n_w - max(0, d)
            if lo < hi:
                out[lo:hi].add_(distance[lo + d : hi + d], alpha=tap)
        return out
    pad = torch.zeros((r, *distance.shape[1:]), dtype=distance.dtype)
    padded = torch.cat([pad, distance, pad])
    return sum(taps[d + r] * padded[r + d : r + d + n_w] for d in range(-r, r + 1))


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
    ) -> Tensor:
        """``chrom`` (M,): the chromosome of each marker (a sorted map); ``chunk``
        queries at a time (default: about 32 million distances per chunk);
        ``block`` overrides the config's window size."""
        block = block or self.config.block
        table = panel.counts_table()
        out = []
        for lo, hi in chromosome_spans(chrom):
            side = PanelWindows.build(panel, lo, hi, block)
            n_w = side.features.shape[0]
            size = chunk or max(1, (32 << 20) // max(1, len(panel.ids) * n_w))
            parts = []
            for start in range(0, len(query.ids), size):
                rows = slice(start, start + size)
                g = _padded(query.genotype[rows], lo, hi, block)
                state = QueryState.observed(g, table, query.ids[rows])
                probs = None
                for layer in self.layers:
                    if probs is not None:
                        state = QueryState.filled(g, table, query.ids[rows], probs)
                    probs = layer(state, side)
                parts.append(probs.flatten(1, 2)[:, : hi - lo])
            out.append(torch.cat(parts))
        return torch.cat(out, dim=1)


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
