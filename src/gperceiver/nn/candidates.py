"""Candidate search for panel attention: per stretch of markers, the ``k`` panel
individuals a query most likely copies from, without comparing it to everyone.

Shape letters as in :mod:`gperceiver.nn.panel`: Q queries, R panel individuals,
S markers of a window, G complete genotypes; T hash tables, C members read per
bucket, K candidates.

A chromosome's windows are grouped into *segments* of ``segment`` windows that
share one candidate list. Each segment has ``T`` hash tables; table ``t`` draws
``b`` typed markers from window ``t mod segment`` and its two neighbours, and an
individual's key is its genotype string at those markers (hashed identity by
state, i.e. bit-sampling locality-sensitive hashing; genotypes, not haplotypes, so
any ploidy and allele number; an individual missing any of the ``b`` loci has no
key in that table). The panel's keys are sorted once per segment (by key, then
by a tie rank drawn from the identities), a query reads the first ``C`` members of
its bucket in every table, its own entry left out, and its candidates are the
``K`` members met in the most tables (ties by the tie rank). Cost per segment
``O((R + Q) T log R + Q T C)``, i.e. linear in the individuals; the markers used
depend on the typed mask and a seed only, so neither the panel's order nor who is
in it changes which loci are hashed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class SearchConfig:
    tables: int = 128  # hash tables per segment (eight per window at segment 16)
    key_markers: int = 8  # loci per key: a neighbour matches ~ (1 - d)^8
    segment: int = 16  # windows sharing one candidate list
    seed: int = 0


def _key_base(n_genotypes: int) -> int:
    return n_genotypes + 1


def choose_key_markers(
    n_windows: int,
    block: int,
    typed: np.ndarray,
    config: SearchConfig,
    salt: int,
    window_offset: int = 0,
) -> list[list[np.ndarray]]:
    """Per segment and table the span-local markers of its key.

    ``typed`` (n_windows * block,) bool, padded with False; ``salt`` (the
    chromosome's first marker) makes chromosomes draw differently;
    ``window_offset`` (a multiple of ``config.segment``): the span's first window
    within its chromosome, so that a stretch read on its own draws as the whole
    chromosome does there.
    """
    if window_offset % config.segment:
        raise ValueError(f"window_offset {window_offset}: not a whole segment")
    out = []
    for seg_lo in range(0, n_windows, config.segment):
        seg_hi = min(n_windows, seg_lo + config.segment)
        rng = np.random.default_rng([config.seed, salt, window_offset + seg_lo, 16])
        tables = []
        for t in range(config.tables):
            w = seg_lo + t % (seg_hi - seg_lo)
            lo, hi = max(0, w - 1) * block, min(n_windows, w + 2) * block
            pool = lo + np.flatnonzero(typed[lo:hi])
            take = min(config.key_markers, len(pool))
            tables.append(np.sort(rng.choice(pool, take, replace=False)))
        out.append(tables)
    return out


_PRIME = 2_147_483_647  # 2^31 - 1: keys are int32


def hash_keys(genotype: Tensor, tables: list[np.ndarray], base: int) -> Tensor:
    """Keys ``(T, N)`` int32 in ``[0, 2^31 - 1)`` of genotype indices ``genotype``
    (N, L) at each table's markers (the string in base ``base``, exact while it
    fits, else reduced modulo a prime); -1 where a locus is missing or the table
    drew no marker."""
    n_b = max(len(m) for m in tables)
    index = np.zeros((len(tables), max(n_b, 1)), np.int64)
    used = np.zeros(index.shape, bool)
    for t, m in enumerate(tables):
        index[t, : len(m)], used[t, : len(m)] = m, True
    part = genotype[:, torch.from_numpy(index)].long()  # (N, T, b)
    part = torch.where(torch.from_numpy(used), part, 0)
    keys = torch.zeros(part.shape[:2], dtype=torch.int64)
    for j in range(part.shape[2]):
        keys = (keys * base + part[..., j].clamp(min=0)) % _PRIME
    bad = (part < 0).any(-1) | torch.from_numpy(~used.any(1))[None]
    return keys.masked_fill(bad, -1).to(torch.int32).T.contiguous()


@dataclass
class CandidateIndex:
    """The panel's sorted keys on one chromosome: per segment ``(T, R)`` int32
    keys sorted (equal keys in tie order, no key last) and the panel rows in that
    order (int32); built once and read by every query chunk and layer."""

    markers: list[list[np.ndarray]]
    sorted_keys: list[Tensor]
    order: list[Tensor]
    tie_rank: Tensor  # (R,) rank of each panel row in tie order
    ids: Tensor  # (R,)
    base: int

    @classmethod
    def build(
        cls,
        panel_windows: Tensor,
        ids: Tensor,
        tie: Tensor,
        n_genotypes: int,
        typed: np.ndarray,
        config: SearchConfig,
        salt: int = 0,
        window_offset: int = 0,
    ) -> CandidateIndex:
        """``panel_windows`` (R, W, S) genotype indices, -1 missing; ``tie`` (R,)
        the tie breaker; ``typed`` (W * S,) bool markers a key may use; ``salt``
        the chromosome's first marker; ``window_offset`` the first window's index
        within the chromosome (see :func:`choose_key_markers`)."""
        r, n_w, s = panel_windows.shape
        base = _key_base(n_genotypes)
        flat = panel_windows.reshape(r, -1)
        markers = choose_key_markers(
            n_w, s, np.asarray(typed), config, salt, window_offset
        )
        by_tie = torch.argsort(tie, stable=True)
        tie_rank = torch.empty(r, dtype=torch.int64)
        tie_rank[by_tie] = torch.arange(r)
        sorted_keys, order = [], []
        flat = flat[by_tie]
        for tables in markers:
            keys = hash_keys(flat, tables, base)  # (T, R), rows in tie order
            keys = keys.masked_fill(keys < 0, torch.iinfo(torch.int32).max)
            values, idx = keys.sort(dim=1, stable=True)  # (T, R), ties by tie rank
            sorted_keys.append(values)
            order.append(by_tie[idx].to(torch.int32))
        return cls(markers, sorted_keys, order, tie_rank, ids, base)

    def search(self, segment: int, query: Tensor, query_ids: Tensor, k: int) -> Tensor:
        """Candidate panel rows ``(Q, K)`` (-1 where fewer were met) of the queries
        ``query`` (Q, W * S) chromosome-local genotype indices on ``segment``."""
        r = len(self.ids)
        tables = self.markers[segment]
        qkeys = hash_keys(query, tables, self.base)  # (T, Q)
        n_t, q = qkeys.shape
        cap = k + 1  # one more than k: the query's own entry may take a place
        start = torch.searchsorted(self.sorted_keys[segment], qkeys)
        pos = start[..., None] + torch.arange(cap)  # (T, Q, C)
        inside = pos < r
        pos = pos.clamp(max=r - 1)
        got = self.sorted_keys[segment].gather(1, pos.view(n_t, -1)).view(pos.shape)
        rows = self.order[segment].gather(1, pos.view(n_t, -1)).view(pos.shape).long()
        valid = inside & (got == qkeys[..., None]) & (qkeys[..., None] >= 0)
        valid &= self.ids[rows] != query_ids[None, :, None]
        valid &= valid.long().cumsum(-1) <= k  # the first k others of each bucket
        return top_met(rows, valid, self.tie_rank, k)


def top_met(rows: Tensor, valid: Tensor, tie_rank: Tensor, k: int) -> Tensor:
    """Per query the ``k`` rows met most often in ``rows`` (T, Q, C) where
    ``valid``, ties by ``tie_rank``: ``(Q, K)``, -1 padded."""
    n_t, q, cap = rows.shape
    r = len(tie_rank)
    qidx = torch.arange(q)[None, :, None].expand_as(rows)
    pairs = (qidx * r + rows)[valid]
    if pairs.numel() == 0:
        return torch.full((q, k), -1, dtype=torch.int64)
    uniq, count = torch.unique(pairs, return_counts=True)
    who, row = uniq // r, uniq % r
    key = (who * (n_t + 2) + (n_t + 1 - count)) * r + tie_rank[row]
    order = torch.argsort(key)
    who, row = who[order], row[order]
    first = torch.searchsorted(who, torch.arange(q))
    rank = torch.arange(len(who)) - first[who]
    keep = rank < k
    out = torch.full((q, k), -1, dtype=torch.int64)
    out[who[keep], rank[keep]] = row[keep]
    return out
