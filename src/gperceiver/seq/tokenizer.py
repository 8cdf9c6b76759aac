"""Nucleotide tokens: one id per IUPAC letter, soft-masking kept as a separate flag.

Vocabulary (ids are stable; they are saved with every model):
``<pad>`` 0, ``<sep>`` 1 (start of a record), ``A C G T`` 2..5, ``N`` 6, the other
IUPAC ambiguity codes ``R Y S W K M B D H V`` 7..16 and the gap ``-`` 17.
Lowercase (soft-masked repeats) maps to the same id with ``soft_mask = True``, so
``decode(encode(s)) == s`` for every valid sequence.
"""

from __future__ import annotations

import numpy as np

PAD, SEP = 0, 1
LETTERS = "ACGTNRYSWKMBDHV-"
VOCAB = ("<pad>", "<sep>", *LETTERS)
BASE_IDS = np.array([2, 3, 4, 5], dtype=np.uint8)  # A, C, G, T
N_BASES = 4
# complement of each letter (IUPAC: R=AG <-> Y=CT, K=GT <-> M=AC, B=CGT <-> V=ACG, ...)
_COMPLEMENT = dict(zip("ACGTNRYSWKMBDHV-", "TGCANYRSWMKVHDB-", strict=True))

_ENCODE = np.full(256, 255, dtype=np.uint8)  # byte -> token id, 255 = invalid
for _i, _letter in enumerate(LETTERS):
    _ENCODE[ord(_letter)] = _i + 2
    if _letter.isalpha():
        _ENCODE[ord(_letter.lower())] = _i + 2
_DECODE = np.frombuffer(("\0\0" + LETTERS).encode(), dtype=np.uint8)
COMPLEMENT_IDS = np.arange(len(VOCAB), dtype=np.uint8)  # token id -> complement id
for _letter, _other in _COMPLEMENT.items():
    COMPLEMENT_IDS[LETTERS.index(_letter) + 2] = LETTERS.index(_other) + 2


class InvalidLetter(ValueError):
    """A byte that is no IUPAC nucleotide code; ``offset`` is its 0-based position."""

    def __init__(self, offset: int, byte: int):
        self.offset, self.byte = offset, byte
        super().__init__(f"invalid nucleotide {chr(byte)!r} at offset {offset}")


def encode(sequence: bytes | str) -> tuple[np.ndarray, np.ndarray]:
    """Letters -> (token ids (S,) uint8, soft-mask flags (S,) bool for lowercase).

    Raises :class:`InvalidLetter` at the first byte outside the vocabulary
    (``U`` included: convert RNA to DNA first).
    """
    raw = np.frombuffer(
        sequence.encode() if isinstance(sequence, str) else sequence, np.uint8
    )
    tokens = _ENCODE[raw]
    bad = np.flatnonzero(tokens == 255)
    if len(bad):
        raise InvalidLetter(int(bad[0]), int(raw[bad[0]]))
    return tokens, raw >= ord("a")


def decode(tokens: np.ndarray, soft_mask: np.ndarray | None = None) -> str:
    """Token ids (S,) -> letters; soft-masked positions come back lowercase.

    Special tokens (pad, sep) have no letter and raise ``ValueError``.
    """
    tokens = np.asarray(tokens)
    if (tokens < 2).any() or (tokens >= len(VOCAB)).any():
        raise ValueError("only nucleotide tokens can be decoded (no <pad>/<sep>)")
    letters = _DECODE[tokens]
    if soft_mask is not None:
        letters = np.where(soft_mask & (letters >= ord("A")), letters | 0x20, letters)
    return letters.astype(np.uint8).tobytes().decode()


def reverse_complement(
    tokens: np.ndarray, soft_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The other strand, read 5' -> 3' (special tokens map to themselves)."""
    return COMPLEMENT_IDS[tokens[..., ::-1]], soft_mask[..., ::-1]


def is_base(tokens: np.ndarray) -> np.ndarray:
    """True where the token is one of A, C, G, T."""
    return (tokens >= 2) & (tokens <= 5)


class KmerTokenizer:
    """Non-overlapping k-mers of A/C/G/T as ids ``0 .. 4**k - 1`` (base-4, first
    letter most significant); any k-mer holding another code gets ``unknown = 4**k``.
    A trailing partial k-mer is dropped."""

    def __init__(self, k: int):
        if not 1 <= k <= 15:
            raise ValueError(f"k-mer size must lie in 1..15, got {k}")
        self.k, self.unknown = k, 4**k

    @property
    def vocab_size(self) -> int:
        return self.unknown + 1

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """Nucleotide ids (S,) -> k-mer ids (S // k,) int64."""
        usable = len(tokens) // self.k * self.k
        block = np.asarray(tokens[:usable]).reshape(-1, self.k)
        digits = block.astype(np.int64) - 2  # A=0 .. T=3 for real bases
        ids = (digits * 4 ** np.arange(self.k - 1, -1, -1)).sum(1)
        ids[~is_base(block).all(1)] = self.unknown
        return ids

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """k-mer ids -> nucleotide ids (unknown k-mers come back as N)."""
        ids = np.asarray(ids, dtype=np.int64)
        digits = (ids[:, None] // 4 ** np.arange(self.k - 1, -1, -1)) % 4
        out = (digits + 2).astype(np.uint8)
        out[ids == self.unknown] = LETTERS.index("N") + 2
        return out.reshape(-1)
