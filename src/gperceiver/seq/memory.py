"""Exact memory of training genomes: every position indexed by its preceding 31 bases.

The memory holds one base stream per genome group, both strands (forward records,
then their reverse complements), bases as digits 0..3 (A C G T) and ``BREAK`` (4)
for every other code and between records/strands. Each position ``i`` whose 31
predecessors are all bases gets the context code

    code(i) = sum_{j=1..31} digit(i - j) * 4**(31 - j)

(the most recent base is most significant), and positions are sorted by that code:
a suffix array of the reversed text truncated at depth 31. The contexts sharing their
last ``k`` bases then form one contiguous range, for every order ``k <= 31``, and
prefix sums of the next base over the sorted order give the next-base counts of any
range in O(1) (variable-order counts, as infini-gram does with a full suffix array).

Saved: ``memory/stream.npy`` (T,) uint8 and ``memory/order.npy`` (N,) int32, about
5 bytes per indexed position, i.e. ~10 MB per Mb of training sequence (both strands);
the sorted codes (8 B) and prefix counts (16 B) are rebuilt on load, ~58 MB per Mb
of training sequence in RAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from ..io import atomic_path
from .tokenizer import COMPLEMENT_IDS

DEPTH = 31  # bases per context code: 62 bits of a non-negative int64
BREAK = 4  # digit of every non-ACGT code and of record/strand boundaries


def digits_of_tokens(tokens: np.ndarray) -> np.ndarray:
    """Token ids (S,) -> digits 0..3 (A C G T), ``BREAK`` for the rest: (S,) uint8."""
    d = tokens.astype(np.int16) - 2
    d[(d < 0) | (d > 3)] = BREAK
    return d.astype(np.uint8)


def join_digits(token_arrays, both_strands: bool) -> np.ndarray:
    """Records (token id arrays) -> one digit stream, each record (and, with
    ``both_strands``, then each reverse complement) followed by ``BREAK``:
    (T,) uint8."""
    parts = [digits_of_tokens(t) for t in token_arrays]
    if both_strands:
        parts += [digits_of_tokens(COMPLEMENT_IDS[t[::-1]]) for t in token_arrays]
    out = []
    for p in parts:
        out += [p, np.array([BREAK], np.uint8)]
    return np.concatenate(out) if out else np.zeros(0, np.uint8)


@numba.njit(cache=True)
def context_codes(stream):
    """(T,) digits -> (codes (T,) int64, valid (T,) bool): the depth-31 context code
    of each position whose next digit is a base and whose 31 predecessors are bases."""
    n = stream.shape[0]
    codes = np.zeros(n, np.int64)
    valid = np.zeros(n, np.bool_)
    code, run = 0, 0
    for i in range(n):
        if run >= DEPTH and stream[i] < 4:
            codes[i] = code
            valid[i] = True
        b = stream[i]
        if b < 4:
            code = (code >> 2) | (np.int64(b) << 60)
            run += 1
        else:
            code, run = 0, 0
    return codes, valid


@dataclass
class Memory:
    """The indexed stream: ``stream`` (T,) uint8 digits, ``order`` (N,) int32
    positions sorted by context code, ``codes`` (N,) int64 sorted codes and
    ``cum`` (N + 1, 4) uint32 prefix counts of the next base in that order."""

    stream: np.ndarray
    order: np.ndarray
    codes: np.ndarray
    cum: np.ndarray

    @classmethod
    def build(cls, stream: np.ndarray) -> Memory:
        codes, valid = context_codes(stream)
        positions = np.flatnonzero(valid)
        sort = np.argsort(codes[positions], kind="stable")
        order = positions[sort].astype(np.int32)
        return cls.from_order(stream, order, codes[order])

    @classmethod
    def from_order(cls, stream, order, codes=None) -> Memory:
        if codes is None:
            codes = context_codes(stream)[0][order]
        cum = np.zeros((len(order) + 1, 4), np.uint32)
        nxt = stream[order]
        for b in range(4):
            np.cumsum(nxt == b, out=cum[1:, b])
        return cls(stream, order, codes, cum)

    @property
    def base_counts(self) -> np.ndarray:
        """(4,) counts of A C G T in the stream (order-0 statistics)."""
        return np.bincount(self.stream, minlength=5)[:4].astype(np.int64)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.stream, self.order, self.codes, self.cum))

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("stream", "order"):
            with atomic_path(directory / f"{name}.npy") as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, getattr(self, name), allow_pickle=False)

    @classmethod
    def load(cls, directory) -> Memory:
        directory = Path(directory)
        stream = np.load(directory / "stream.npy", allow_pickle=False)
        order = np.load(directory / "order.npy", allow_pickle=False)
        return cls.from_order(stream, order)
