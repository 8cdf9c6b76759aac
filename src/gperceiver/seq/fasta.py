"""Streaming FASTA reader for plain, gzip and xz files (detected from magic bytes).

Records are yielded one at a time, so memory holds one record, not the file.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..io import InputError
from .tokenizer import InvalidLetter, encode

_GZIP, _XZ = b"\x1f\x8b", b"\xfd7zXZ\x00"


@dataclass
class SequenceFile:
    """The records of one FASTA file, read at the edge: ``path`` names it in
    summaries and messages."""

    path: str
    records: list[Record]

    @property
    def tokens(self) -> list[np.ndarray]:
        return [r.tokens for r in self.records]


def read_sequence_files(paths) -> list[SequenceFile]:
    """Every record of every FASTA file in ``paths``; refuses files without a
    single sequence letter between them."""
    files = [SequenceFile(str(p), list(read_fasta(p))) for p in paths]
    if not any(len(r.tokens) for f in files for r in f.records):
        raise InputError(paths[0], None, "no sequence letters", "pass non-empty FASTA")
    return files


@dataclass
class Record:
    """One FASTA record: ``tokens`` (S,) uint8 ids and ``soft_mask`` (S,) bool."""

    name: str
    tokens: np.ndarray
    soft_mask: np.ndarray


def open_binary(path) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressing gzip or xz transparently."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except FileNotFoundError:
        raise InputError(path, None, "file not found", "check the path") from None
    if magic.startswith(_GZIP):
        return gzip.open(path, "rb")
    if magic.startswith(_XZ):
        return lzma.open(path, "rb")
    return open(path, "rb")


def read_fasta(path) -> Iterator[Record]:
    """Yield the records of a FASTA file in order.

    Raises :class:`InputError` naming the line and column of an invalid letter, a
    sequence line before the first header, an empty file or a corrupt archive.
    """
    name, chunks, line_starts = None, [], []
    length, seen = 0, False

    def finish() -> Record:
        tokens, mask = [], []
        for (line_no, _), chunk in zip(line_starts, chunks, strict=True):
            try:
                t, m = encode(chunk)
            except InvalidLetter as err:
                raise InputError(
                    path,
                    f"line {line_no}, column {err.offset + 1}",
                    f"{chr(err.byte)!r} is not a nucleotide (IUPAC) code",
                    "use A C G T, N, IUPAC ambiguity codes or '-' only",
                ) from None
            tokens.append(t)
            mask.append(m)
        if not tokens:
            return Record(name, np.zeros(0, np.uint8), np.zeros(0, bool))
        return Record(name, np.concatenate(tokens), np.concatenate(mask))

    try:
        with open_binary(path) as handle:
            for line_no, line in enumerate(handle, start=1):
                line = line.rstrip(b"\r\n")
                if line.startswith(b">"):
                    if name is not None:
                        yield finish()
                    name = line[1:].split(maxsplit=1)[0].decode(errors="replace")
                    name = name or f"record{line_no}"
                    chunks, line_starts, length, seen = [], [], 0, True
                elif line.strip():
                    if name is None:
                        raise InputError(
                            path,
                            f"line {line_no}",
                            "sequence before the first '>' header",
                            "is this a FASTA file? start each record with '>name'",
                        )
                    line = line.strip()
                    chunks.append(line)
                    line_starts.append((line_no, length))
                    length += len(line)
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise InputError(
            path, None, f"cannot read ({err})", "check that the file is complete"
        ) from None
    if not seen:
        raise InputError(
            path, None, "no FASTA record ('>' header) found", "pass a FASTA file"
        )
    yield finish()
