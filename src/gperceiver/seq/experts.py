"""Causal experts over a digit stream: variable-order memory counts and copy pointers.

One pass over a sequence ``x`` (digits 0..3, ``BREAK`` 4) predicts every base ``x[t]``
from ``x[:t]`` and the :class:`~gperceiver.seq.memory.Memory` only:

- **Count experts**: the context's range in the memory is narrowed order by order
  (``ORDERS``, up to 31 bases); next-base counts are interpolated Witten-Bell from
  the add-one order 0 upwards, and the estimate after each of ``EXPERT_ORDERS`` is an
  expert (a context not in memory backs off to the order below).
- **Copy experts** (slots), as in XM / GeCo's repeat models: a pointer into a source
  predicts the base it points at and moves on whether or not it was right, so a SNP
  does not break the copy; it is dropped after too many misses. ``MEMORY_SLOTS``
  pointers into the memory (both strands of the training genomes) start at
  occurrences of the longest matching context of at least ``anchor_order`` bases;
  one pointer copies earlier ``x`` forward and one copies earlier ``x`` reverse-
  complemented (inverted repeats), found through 16-mer hash tables of ``x[:t]``.

Per emitted position: ``logp`` (E, 4) natural-log expert distributions, ``z`` (F,)
features for the gate (slot hit rates, ages, match lengths, counts) and ``pred`` (S,)
each slot's predicted digit (-1: none). State is carried in arrays, so a long
sequence can be run in chunks with the same result.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .memory import Memory

ORDERS = np.array(
    [1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 13, 14, 16, 18, 20, 22, 24, 27, 31], np.int64
)
EXPERT_ORDERS = np.array([2, 4, 6, 8, 10, 11, 12, 13, 14, 16, 18, 20, 24, 31])
FEATURE_ORDERS = np.array([8, 11, 12, 14, 16, 20, 24, 31])
MEMORY_SLOTS = 3
SLOTS = MEMORY_SLOTS + 2  # + forward self-copy + reverse-complement self-copy
SELF_K = 16  # bases of the self-copy hash key (4**16 codes fit in 32 bits)
N_FEATURES = 5 * SLOTS + 3 + len(FEATURE_ORDERS) + 1 + 2
N_EXPERTS = len(EXPERT_ORDERS)
MASK32 = (1 << 32) - 1


@numba.njit(cache=True)
def _popcount(v):
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    return (((v + (v >> 4)) & 0x0F0F0F0F) * 0x01010101 & MASK32) >> 24


@numba.njit(cache=True)
def _lower_bound(codes, lo, hi, shift, q):
    """First index in [lo, hi) with ``codes[i] >> shift >= q`` (codes sorted)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if (codes[mid] >> shift) < q:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True)
def _hash(code, bits):
    return ((code * 2654435761) >> 5) & ((1 << bits) - 1)


@numba.njit(cache=True)
def _poor(hist, n):
    """A pointer that missed at least 4 of its last 8 predictions."""
    return n >= 8 and _popcount(hist & 0xFF) <= 4


@numba.njit(cache=True)
def _kind(s):
    """0: memory pointer, 1: forward self-copy, 2: reverse-complement self-copy."""
    return 0 if s < MEMORY_SLOTS else s - MEMORY_SLOTS + 1


@numba.njit(cache=True)
def _slot_pred(kind, ptr, x, mem_stream):
    """Digit a pointer predicts (4 when it points at a break or outside)."""
    if ptr < 0:
        return 4
    if kind == 0:
        return mem_stream[ptr] if ptr < mem_stream.shape[0] else 4
    if ptr >= x.shape[0]:
        return 4
    d = x[ptr]
    if kind == 2 and d < 4:
        return 3 - d
    return d


@numba.njit(cache=True)
def _streak(hist, n):
    s = 0
    while s < min(n, 32) and (hist >> s) & 1:
        s += 1
    return s


@numba.njit(cache=True)
def _anchor_memory(ptr, hist, cnt, lo, hi, order):
    """Start idle or poor memory pointers at occurrences in [lo, hi) not in use."""
    j = lo
    for s in range(MEMORY_SLOTS):
        if ptr[s] >= 0 and not _poor(hist[s], cnt[s]):
            continue
        while j < min(hi, lo + 16):
            cand = order[j]
            j += 1
            used = False
            for r in range(MEMORY_SLOTS):
                used = used or ptr[r] == cand
            if not used:
                ptr[s], hist[s], cnt[s] = cand, 0, 0
                break


@numba.njit(cache=True)
def _anchor_self(s, key, keys, vals, bits, ptr, hist, cnt):
    h = _hash(key, bits)
    if keys[h] == key and vals[h] != ptr[s]:
        if ptr[s] < 0 or _poor(hist[s], cnt[s]):
            ptr[s], hist[s], cnt[s] = vals[h], 0, 0


@numba.njit(cache=True)
def _emit(row, p_snap, z, logp_out, z_out, pred_out, ptr, hist, cnt, x, ms):
    """Write one position's expert log-probabilities, gate features and predictions."""
    for e in range(p_snap.shape[0]):
        for b in range(4):
            logp_out[row, e, b] = math.log(p_snap[e, b])
    # memory slots sorted best first (active, recent hits, all hits, age)
    score = np.empty(MEMORY_SLOTS)
    for s in range(MEMORY_SLOTS):
        a = 1.0 if ptr[s] >= 0 else 0.0
        score[s] = a * (
            1e6 + _popcount(hist[s] & 0xFF) * 1e4 + _popcount(hist[s]) * 100
        )
        score[s] += a * min(cnt[s], 99)
    rank = np.argsort(-score)
    f = 0
    for i in range(SLOTS):
        s = rank[i] if i < MEMORY_SLOTS else i
        d = _slot_pred(_kind(s), ptr[s], x, ms)
        active = d < 4
        pred_out[row, i] = d if active else -1
        z[f] = 1.0 if active else 0.0
        z[f + 1] = _popcount(hist[s] & 0xFF) / 8.0 if active else 0.0
        z[f + 2] = _popcount(hist[s]) / 32.0 if active else 0.0
        z[f + 3] = math.log1p(cnt[s]) / 6.0 if active else 0.0
        z[f + 4] = math.log1p(_streak(hist[s], cnt[s])) / 4.0 if active else 0.0
        f += 5
    top = pred_out[row, 0]
    agree = 0
    for i in range(1, SLOTS):
        agree += 1 if top >= 0 and pred_out[row, i] == top else 0
    z[z.shape[0] - 2] = agree / (SLOTS - 1)
    z[z.shape[0] - 1] = 1.0 if top >= 0 and np.argmax(p_snap[-1]) == top else 0.0
    z_out[row] = z


@numba.njit(cache=True)
def _count_orders(
    ctx, run, codes, cum, orders, base_p, expert_at, feature_at, p_snap, z
):
    """Blend the memory's next-base counts order by order while the context
    ``ctx`` (valid for ``run`` bases) is found; snapshot the blend for each expert
    in ``p_snap`` and write the count features into ``z``. Returns the final
    memory range and the longest order found with its total and distinct counts."""
    p = base_p.copy()
    lo, hi, longest, n_long, u_long = 0, codes.shape[0], 0, 0, 0
    reached, e, fo = True, 0, 0
    for o in range(orders.shape[0]):
        k = orders[o]
        if reached and k <= run and hi > lo:
            shift = 62 - 2 * k
            q = ctx >> shift
            nlo = _lower_bound(codes, lo, hi, shift, q)
            nhi = _lower_bound(codes, nlo, hi, shift, q + 1)
            if nlo < nhi:
                lo, hi = nlo, nhi
                total, u = 0, 0
                for b in range(4):
                    c = np.int64(cum[hi, b]) - np.int64(cum[lo, b])
                    total += c
                    u += 1 if c > 0 else 0
                for b in range(4):
                    c = np.int64(cum[hi, b]) - np.int64(cum[lo, b])
                    p[b] = (c + u * p[b]) / (total + u)
                longest, n_long, u_long = k, total, u
            else:
                reached = False
        else:
            reached = False
        if fo < feature_at.shape[0] and feature_at[fo] == o:
            z[5 * SLOTS + 3 + fo] = math.log1p(n_long if longest == k else 0) / 8.0
            fo += 1
        if e < expert_at.shape[0] and expert_at[e] == o:
            p_snap[e] = p
            e += 1
    return lo, hi, longest, n_long, u_long


@numba.njit(cache=True)
def _advance_slots(b, ptr, hist, cnt, x, ms):
    """Score every live copy pointer against the observed base ``b`` (4 = N),
    move it one base on, and drop pointers that mispredict or run off."""
    for s in range(SLOTS):
        if ptr[s] < 0:
            continue
        d = _slot_pred(_kind(s), ptr[s], x, ms)
        if b < 4:
            hist[s] = ((hist[s] << 1) | (1 if d == b else 0)) & MASK32
            cnt[s] += 1
        ptr[s] += -1 if _kind(s) == 2 else 1
        if cnt[s] >= 16 and _popcount(hist[s] & 0xFFFF) < 8:
            ptr[s] = -1
        elif _slot_pred(_kind(s), ptr[s], x, ms) == 4:
            ptr[s] = -1


@numba.njit(cache=True)
def run_experts(
    x, emit, ms, codes, cum, order, base_p, orders, expert_at, feature_at,
    anchor_order, state, ptr, hist, cnt, fkeys, fvals, rkeys, rvals,
    logp_out, z_out, pred_out, start, stop, row,
):  # fmt: skip
    """Advance over ``x[start:stop]``; emit rows at positions listed in ``emit``
    (sorted, from index ``row``). Returns the next row index. ``state`` holds
    [context code, valid run, forward 16-mer code, reverse-complement 16-mer code]."""
    p_snap = np.empty((expert_at.shape[0], 4))
    z = np.zeros(z_out.shape[1])
    bits = int(np.log2(fkeys.shape[0]))
    top_code = np.int64(4**SELF_K - 1)
    for t in range(start, stop):
        ctx, run, fcode, rcode = state[0], state[1], state[2], state[3]
        # 1. variable-order counts, narrowing the memory range order by order
        lo, hi, longest, n_long, u_long = _count_orders(
            ctx, run, codes, cum, orders, base_p, expert_at, feature_at, p_snap, z
        )
        z[5 * SLOTS] = longest / 31.0
        z[5 * SLOTS + 1] = math.log1p(n_long) / 8.0
        z[5 * SLOTS + 2] = u_long / 4.0
        z[5 * SLOTS + 3 + feature_at.shape[0]] = min(run, 31) / 31.0
        # 2. (re)start copy pointers
        if longest >= anchor_order:
            _anchor_memory(ptr, hist, cnt, lo, hi, order)
        if run >= SELF_K:
            _anchor_self(MEMORY_SLOTS, fcode, fkeys, fvals, bits, ptr, hist, cnt)
            _anchor_self(MEMORY_SLOTS + 1, fcode, rkeys, rvals, bits, ptr, hist, cnt)
        # 3. emit
        if row < emit.shape[0] and emit[row] == t:
            _emit(row, p_snap, z, logp_out, z_out, pred_out, ptr, hist, cnt, x, ms)
            row += 1
        # 4. observe x[t]
        b = x[t]
        _advance_slots(b, ptr, hist, cnt, x, ms)
        if b < 4:
            if run >= SELF_K:  # context x[t-16:t] was followed by x[t]
                h = _hash(fcode, bits)
                fkeys[h], fvals[h] = fcode, t
            fcode = ((fcode << 2) | b) & top_code
            rcode = (rcode >> 2) | (np.int64(3 - b) << (2 * SELF_K - 2))
            # x[t-15:t+1] reverse-complemented: its continuation is comp(x[t-16])
            if run + 1 >= SELF_K and t - SELF_K >= 0:
                h = _hash(rcode, bits)
                rkeys[h], rvals[h] = rcode, t - SELF_K
            state[0] = (ctx >> 2) | (np.int64(b) << 60)
            state[1] = run + 1
        else:
            state[0], state[1], fcode, rcode = 0, 0, 0, 0
        state[2], state[3] = fcode, rcode
    return row


class ExpertPass:
    """Runs :func:`run_experts` over one sequence in chunks, carrying its state."""

    def __init__(self, memory: Memory, x: np.ndarray, anchor_order: int = 16):
        self.memory, self.x, self.anchor_order = memory, x, anchor_order
        counts = memory.base_counts
        self.base_p = (counts + 1.0) / (counts.sum() + 4.0)
        self.expert_at = np.searchsorted(ORDERS, EXPERT_ORDERS).astype(np.int64)
        self.feature_at = np.searchsorted(ORDERS, FEATURE_ORDERS).astype(np.int64)
        bits = int(min(22, max(10, math.ceil(math.log2(max(len(x), 2))) + 1)))
        self.tables = [np.full(1 << bits, -1, np.int64) for _ in range(4)]
        self.state = np.zeros(4, np.int64)
        self.ptr = np.full(SLOTS, -1, np.int64)
        self.hist = np.zeros(SLOTS, np.int64)
        self.cnt = np.zeros(SLOTS, np.int64)
        self.position = 0

    def advance(self, stop: int, emit: np.ndarray):
        """Run to ``stop``; features at the sorted positions ``emit`` (all in
        [position, stop)): (logp (M, E, 4) float32, z (M, F) float32,
        pred (M, S) int8)."""
        m = len(emit)
        logp = np.zeros((m, N_EXPERTS, 4), np.float32)
        z = np.zeros((m, N_FEATURES), np.float32)
        pred = np.full((m, SLOTS), -1, np.int8)
        mem = self.memory
        fk, fv, rk, rv = self.tables
        rows = run_experts(
            self.x, emit.astype(np.int64), mem.stream, mem.codes, mem.cum, mem.order,
            self.base_p, ORDERS, self.expert_at, self.feature_at, self.anchor_order,
            self.state, self.ptr, self.hist, self.cnt, fk, fv, rk, rv,
            logp, z, pred, self.position, stop, 0,
        )  # fmt: skip
        assert rows == m, "emit positions must lie in [position, stop)"
        self.position = stop
        return logp, z, pred
