"""PLINK 2 filesets (``.pgen`` + ``.pvar`` + ``.psam``) read through pgenlib.

A fileset is named by any of its files or their prefix. The ``.pvar`` gives CHROM,
POS, ID (``.`` names a variant ``chrom:pos:REF:ALT``, as the VCF reader does), REF
and ALT (several ALTs: multi-allelic sites are read), QUAL and FILTER where it has
them; the ``.psam`` names individuals by IID. A ``.bim``/``.fam`` stands in for a
missing ``.pvar``/``.psam``, as plink2 allows. Calls are diploid (plink2 stores a
haploid call, e.g. male X, as homozygous); ``-9`` is missing. Phase is kept where
the file has it (for conversions; :class:`Genotypes` drop it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import InputError
from .variants import (
    VariantBlock,
    check_unique_ids,
    genotypes_from_blocks,
    marker_name,
)

PGEN_SUFFIXES = (".pgen", ".pvar", ".psam")
FIX = "re-export the fileset with plink2 --make-pgen"


def pgen_fileset(path) -> dict[str, Path]:
    """``pgen``, ``pvar``, ``psam`` paths of a fileset named by a file or prefix;
    a ``.bim``/``.fam`` replaces an absent ``.pvar``/``.psam``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in PGEN_SUFFIXES else path
    files = {
        ext: stem.with_name(f"{stem.name}.{ext}") for ext in ("pgen", "pvar", "psam")
    }
    for ext, alt in (("pvar", "bim"), ("psam", "fam")):
        other = stem.with_name(f"{stem.name}.{alt}")
        if not files[ext].exists() and other.exists():
            files[ext] = other
    return files


def _lines(path, what: str) -> tuple[list[str], list[list[str]]]:
    """``##`` meta lines and the other lines split on whitespace (header first)."""
    if not path.exists():
        raise InputError(path, None, "no such file", f"give the {what} of the fileset")
    meta, rows = [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("##"):
                meta.append(line.rstrip("\n"))
            elif line.strip():
                rows.append(line.split())
    if not rows or (rows[0][0].startswith("#") and len(rows) == 1):
        raise InputError(path, None, "no records", f"give a {what} with one row each")
    return meta, rows


def _columns(path, rows, default: list[str], needed: tuple[str, ...]):
    """Column name -> index from a ``#`` header line (or ``default``), and the rows."""
    names = [c.lstrip("#") for c in rows[0]] if rows[0][0].startswith("#") else default
    body = rows[1:] if rows[0][0].startswith("#") else rows
    index = {name: i for i, name in enumerate(names)}
    absent = [c for c in needed if c not in index]
    if absent:
        raise InputError(path, "header", f"no {absent[0]} column", FIX)
    for record, fields in enumerate(body, start=1):
        if len(fields) != len(names):
            raise InputError(
                path,
                f"record {record}",
                f"{len(fields)} fields, the header has {len(names)}",
                FIX,
            )
    return index, body


class PgenSource:
    """A PLINK 2 fileset opened for reading; ``.pvar``/``.psam`` are validated."""

    def __init__(self, path):
        from .vcf import parse_header

        files = pgen_fileset(path)
        self.path = files["pgen"]
        if not self.path.exists():
            raise InputError(self.path, None, "no such file", "check the path")
        _, psam = _lines(files["psam"], ".psam")
        fam_order = ["FID", "IID", "PAT", "MAT", "SEX", "PHENO"]
        col, body = _columns(files["psam"], psam, fam_order, ("IID",))
        self.samples = np.array([r[col["IID"]] for r in body], dtype=str)
        unique, counts = np.unique(self.samples, return_counts=True)
        if (counts > 1).any():
            raise InputError(
                files["psam"],
                "IID column",
                f"individual ID {str(unique[counts > 1][0])!r} appears twice",
                "give every individual a unique IID",
            )
        meta, pvar = _lines(files["pvar"], ".pvar")
        bim_order = ["CHROM", "ID", "CM", "POS", "ALT", "REF"]
        col, body = _columns(files["pvar"], pvar, bim_order, ("CHROM", "POS", "REF"))
        self.header = parse_header("\n".join(meta))
        self._read_variants(files["pvar"], col, body)

    def _read_variants(self, path, col: dict, body: list[list[str]]) -> None:
        chrom = [r[col["CHROM"]] for r in body]
        try:
            pos = np.array([int(r[col["POS"]]) for r in body], dtype=np.int64)
        except ValueError as err:
            raise InputError(path, "POS column", f"not a number ({err})", FIX) from None
        alleles = [[r[col["REF"]], *_alts(r, col)] for r in body]
        ids = [r[col["ID"]] if "ID" in col else "." for r in body]
        missing = np.array([i == "." for i in ids])
        names = [
            marker_name(c, p, a) if m else i
            for c, p, a, i, m in zip(chrom, pos, alleles, ids, missing, strict=True)
        ]
        width = max(len(a) for a in alleles)
        self.contig = np.array(chrom, dtype=str)
        self.position = pos
        self.ids = np.array(names, dtype=str)
        self.id_missing = missing
        self.alleles = np.array([a + [""] * (width - len(a)) for a in alleles], str)
        check_unique_ids(self.ids, path)
        cm = np.full(len(body), np.nan)
        if "CM" in col and (pos == 0).all():
            cm = np.array([float(r[col["CM"]]) for r in body])
        self.map_position = cm
        self.quality = np.array(
            [_number(r[col["QUAL"]]) if "QUAL" in col else np.nan for r in body],
            dtype=np.float32,
        )
        self.filters = self._filters(body, col) if "FILTER" in col else None
        if not self.header.contigs:
            contigs = dict.fromkeys(self.contig.tolist())
            self.header.contigs = [(c, None) for c in contigs]
        counts = np.array([len(a) for a in alleles], dtype=np.uintp)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.uintp)

    def _filters(self, body, col) -> np.ndarray:
        index = {f: i for i, (f, _) in enumerate(self.header.filters)}
        flags = []
        for r in body:
            on = [] if r[col["FILTER"]] == "." else r[col["FILTER"]].split(";")
            for f in on:
                if f not in index:
                    index[f] = len(index)
                    self.header.filters.append((f, ""))
            flags.append([index[f] for f in on])
        table = np.zeros((len(body), len(index)), dtype=bool)
        for i, on in enumerate(flags):
            table[i, on] = True
        return table

    def _reader(self):
        import pgenlib

        try:
            return pgenlib.PgenReader(
                bytes(self.path),
                raw_sample_ct=len(self.samples),
                allele_idx_offsets=self.offsets,
            )
        except RuntimeError as err:
            detail = str(err).strip().strip("b'\"").splitlines()[0]
            raise InputError(self.path, None, f"pgenlib: {detail}", FIX) from None

    def blocks(self, size: int = 10_000) -> Iterator[VariantBlock]:
        reader = self._reader()
        n, v = len(self.samples), len(self.ids)
        if reader.get_variant_ct() != v or reader.get_raw_sample_ct() != n:
            raise InputError(
                self.path,
                None,
                f"{reader.get_variant_ct()} variants x {reader.get_raw_sample_ct()} "
                f"samples, the .pvar/.psam list {v} x {n}",
                "keep the .pgen, .pvar and .psam of one fileset together",
            )
        phase = reader.hardcall_phase_present()
        try:
            for start in range(0, v, size):
                stop = min(start + size, v)
                codes = np.empty((stop - start, 2 * n), dtype=np.int32)
                present = np.zeros((stop - start, n), dtype=np.uint8)
                if phase:
                    reader.read_alleles_and_phasepresent_range(
                        start, stop, codes, present
                    )
                else:
                    reader.read_alleles_range(start, stop, codes)
                calls = codes.reshape(stop - start, n, 2)
                calls[calls < 0] = -1  # -9: missing
                part = slice(start, stop)
                yield VariantBlock(
                    self.contig[part],
                    self.position[part],
                    self.map_position[part],
                    self.ids[part],
                    self.alleles[part],
                    calls.astype(np.int8),
                    id_missing=self.id_missing[part],
                    phased=present.astype(bool) if phase else None,
                    quality=self.quality[part],
                    filters=None if self.filters is None else self.filters[part],
                )
        except RuntimeError as err:
            raise InputError(self.path, None, f"pgenlib: {err}", FIX) from None
        finally:
            reader.close()


def _alts(row, col) -> list[str]:
    alt = row[col["ALT"]] if "ALT" in col else "."
    return [] if alt == "." else alt.split(",")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return np.nan


def read_pgen(path):
    """Read a PLINK 2 fileset into :class:`Genotypes` (diploid)."""
    source = PgenSource(path)
    return genotypes_from_blocks(source.blocks(), source.samples, source.path)
