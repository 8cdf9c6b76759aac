"""Panel attention over a candidate shortlist: the same copy as
:class:`gperceiver.nn.panel.PanelLayer`, reading only the ``K`` candidates of each
segment (:mod:`gperceiver.nn.candidates`) instead of the whole panel.

Shape letters as in :mod:`gperceiver.nn.panel`; L markers of the chromosome
(padded to whole windows), F = A + 2 features per locus.

Per query chunk and segment the candidates' genotypes are gathered over the
segment's windows and ``max(head_radii)`` windows either side (what the heads mix
in), so the cost is ``O(Q K L (A + 2))`` per layer, linear in the individuals,
and the memory of a chunk does not grow with the markers (beyond the chunk's
``(Q, L, G)`` output).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gperceiver.nn.candidates import CandidateIndex, SearchConfig
from gperceiver.nn.window_mixing import mix_along_windows


def padded_windows(genotype: Tensor, lo: int, hi: int, block: int) -> Tensor:
    """Markers ``lo:hi`` of ``genotype`` (N, M) as ``(N, W, S)`` windows of the
    same dtype, the last padded with -1 (missing)."""
    n_w = -(-(hi - lo) // block)
    out = torch.full((genotype.shape[0], n_w * block), -1, dtype=genotype.dtype)
    out[:, : hi - lo] = genotype[:, lo:hi]
    return out.view(genotype.shape[0], n_w, block)


def self_rows(query_ids: Tensor, panel_ids: Tensor) -> Tensor:
    """Panel row of each query ``(Q,)``, -1 for a query not in the panel."""
    order = torch.argsort(panel_ids)
    ids = panel_ids[order]
    pos = torch.searchsorted(ids, query_ids).clamp(max=len(ids) - 1)
    return torch.where(ids[pos] == query_ids, order[pos], -1)


@dataclass
class ShortlistPanel:
    """The panel on one chromosome: ``genotype`` (R, W, S) int16 indices, -1
    missing; ``counts`` (W, S, G) called genotypes summed over the panel;
    ``features`` (G + 1, F) = [called, squared norm, copy counts] of each genotype
    (the last row, missing, all zero); the candidate ``index``; ``lookup``
    (R + 1, W, S) int16, ``genotype`` with ``G`` for missing and a last row all
    ``G`` (no candidate), what :meth:`gather` reads."""

    genotype: Tensor
    counts: Tensor
    features: Tensor
    index: CandidateIndex
    ids: Tensor
    n_genotypes: int
    lookup: Tensor = None

    def __post_init__(self):
        if self.lookup is None:
            g = torch.where(self.genotype < 0, self.n_genotypes, self.genotype)
            none = torch.full((1, *g.shape[1:]), self.n_genotypes, dtype=g.dtype)
            self.lookup = torch.cat([g, none])

    @classmethod
    def build(
        cls, panel, lo, hi, block, typed, search: SearchConfig, tie, salt=None, offset=0
    ):
        """``panel``: :class:`PanelGenotypes` on markers ``lo:hi``; ``typed`` (M,)
        bool, the markers a hash key may use; ``salt`` the chromosome's first
        marker (default ``lo``) and ``offset`` the first window's index within the
        chromosome: a stretch of a chromosome read on its own (streamed) hashes as
        the whole chromosome does there."""
        g = padded_windows(panel.genotype, lo, hi, block)
        r, n_w, s = g.shape
        table = panel.counts_table()  # (G, A)
        n_g = table.shape[0]
        feats = torch.cat([torch.ones(n_g, 1), (table**2).sum(1, True), table], 1)
        feats = torch.cat([feats, torch.zeros(1, feats.shape[1])])
        counts = torch.zeros(n_w * s * (n_g + 1), dtype=torch.float64)
        flat_pos = torch.arange(n_w * s) * (n_g + 1)
        for start in range(0, r, 64):
            part = g[start : start + 64].reshape(-1, n_w * s).long()
            part = torch.where(part < 0, n_g, part) + flat_pos
            counts += torch.bincount(part.flatten(), minlength=len(counts))
        counts = counts.view(n_w, s, n_g + 1)[..., :n_g].float()
        typed_w = np.zeros(n_w * s, bool)
        typed_w[: hi - lo] = np.asarray(typed)[lo:hi]
        salt = lo if salt is None else salt
        index = CandidateIndex.build(
            g, panel.ids, tie, n_g, typed_w, search, salt, offset
        )
        return cls(g, counts, feats, index, panel.ids, n_g)

    def gather(self, rows: Tensor, w_lo: int, w_hi: int) -> Tensor:
        """Genotype indices ``(Q, K, W', S)`` of candidate ``rows`` (Q, K) on
        windows ``w_lo:w_hi``, ``G`` where missing or no candidate (-1)."""
        rows = torch.where(rows < 0, self.lookup.shape[0] - 1, rows)
        return self.lookup[rows, w_lo:w_hi].long()

    def prior(self, self_row: Tensor, w_lo: int, w_hi: int, pseudo: float = 0.5):
        """Genotype frequencies ``(Q, W', S, G)`` among the panel's calls on
        windows ``w_lo:w_hi`` without each query's own row."""
        counts = self.counts[w_lo:w_hi][None].repeat(len(self_row), 1, 1, 1)
        has = self_row >= 0
        if has.any():
            own = self.gather(self_row[has, None], w_lo, w_hi)[:, 0]
            onehot = nn.functional.one_hot(own, self.n_genotypes + 1)
            counts[has] -= onehot[..., : self.n_genotypes].float()
        counts = counts + pseudo
        return counts / counts.sum(-1, keepdim=True)


def query_features(counts: Tensor, sq: Tensor, weight: Tensor) -> Tensor:
    """Per locus ``(Q, W, S, F)`` what a query is matched on:
    [weight * squared norm, weight, -2 weight * counts]."""
    w = weight[..., None]
    return torch.cat([w * sq[..., None], w, -2 * w * counts], -1)


def shortlist_layer(layer, query_feats, side, candidates, self_row, k_windows):
    """One copy step over the shortlist for one query chunk.

    ``query_feats`` (Q, W, S, F) from :func:`query_features`; ``candidates`` a list
    of (Q, K) per segment; ``k_windows`` the windows per segment. Returns genotype
    probabilities ``(Q, W, S, G)``.

    Each query locus's distance to every genotype a panel individual can have
    there, ``(Q, W, S, G + 1)`` (0 for a missing one), is formed once; a
    candidate's distance is then a lookup by its genotype index, and the copy a
    scatter-add of its weight onto that index: no ``G``-wide tensor per candidate.
    """
    n_w = side.genotype.shape[1]
    reach = max(layer.config.head_radii)
    mix = torch.softmax(layer.head_logits, 0)
    prior_w = layer.log_prior.exp()
    per_genotype = query_feats @ side.features.T  # (Q, W, S, G + 1)
    out = []
    for seg, rows in enumerate(candidates):
        s_lo, s_hi = seg * k_windows, min(n_w, (seg + 1) * k_windows)
        a, b = max(0, s_lo - reach), min(n_w, s_hi + reach)
        g = side.gather(rows, a, b)  # (Q, K, W', S)
        table = per_genotype[:, None, a:b].expand(-1, g.shape[1], -1, -1, -1)
        dist = table.gather(-1, g[..., None])[..., 0].sum(-1).clamp(min=0)
        dist = dist.permute(2, 0, 1)  # (W', Q, K)
        alpha = 0
        for h, taps in enumerate(layer.taps):
            logits = mix_along_windows(dist, -layer.log_scale[h].exp() * taps)
            logits = logits[s_lo - a : s_hi - a].masked_fill(rows[None] < 0, -torch.inf)
            weights = torch.softmax(logits, -1).nan_to_num(0.0)  # (W'', Q, K)
            alpha = alpha + mix[h] * weights
        own = g[:, :, s_lo - a : s_hi - a].permute(0, 2, 3, 1)  # (Q, W'', S, K)
        src = alpha.permute(1, 0, 2)[:, :, None].expand(own.shape)
        num = torch.zeros(*own.shape[:3], side.n_genotypes + 1)
        num = num.scatter_add(-1, own, src)[..., :-1]  # (Q, W'', S, G)
        den = num.sum(-1, keepdim=True)
        freq = side.prior(self_row, s_lo, s_hi)
        out.append((num + prior_w * freq) / (den + prior_w))
    return torch.cat(out, 1)
