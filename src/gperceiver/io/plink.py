"""PLINK 1 binary filesets (``.bed`` + ``.bim`` + ``.fam``), diploid and biallelic.

A fileset is named by any of its three files or by their common prefix
(``cohort`` for ``cohort.bed``, ``cohort.bim``, ``cohort.fam``). The ``.bed`` holds,
per individual and variant, the count of allele A1 (``.bim`` column 5). Following
PLINK 2, A2 (column 6) is taken as REF: allele id 1 = A2, allele id 2 = A1, so a
VCF and the fileset ``plink2 --vcf ... --make-bed`` makes from it read into
identical genotypes. Individuals are named by IID (``.fam`` column 2); markers by
the ``.bim`` ID; positions are bp (column 4), or cM (column 3) when every bp
position is 0. The genotype matrix is read through bed-reader; writing
(:func:`write_plink_blocks`) streams variant blocks, keeping their REF/ALT.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..data import Genotypes
from .atomic import fsync_path, sync_tree
from .errors import InputError, InputWarning
from .variants import (
    VariantBlock,
    VariantHeader,
    allele_ids,
    blocks_from_genotypes,
    check_unique_ids,
    genotypes_from_blocks,
    marker_name,
)

PLINK_MISSING = -127  # bed-reader's int8 code of a missing call


def fileset(path) -> dict[str, Path]:
    """The three paths of a fileset named by its ``.bed`` (any of the three, or
    their prefix)."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".bed", ".bim", ".fam") else path
    return {ext: stem.with_name(stem.name + f".{ext}") for ext in ("bed", "bim", "fam")}


def _fields(path, n_fields: int, what: str) -> list[list[str]]:
    """Whitespace-split lines of a ``.bim``/``.fam``, each with ``n_fields`` fields."""
    if not path.exists():
        raise InputError(path, None, "no such file", f"give the {what} of the fileset")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != n_fields:
                raise InputError(
                    path,
                    f"line {line_no}",
                    f"{len(fields)} fields, a {what} line has {n_fields}",
                    "fix the line or re-export the fileset with plink",
                )
            rows.append(fields)
    if not rows:
        raise InputError(path, None, "empty file", f"give a {what} with one row each")
    return rows


def _numbers(path, rows, column: int, cast, what: str) -> np.ndarray:
    values = []
    for line_no, fields in enumerate(rows, start=1):
        try:
            values.append(cast(fields[column]))
        except ValueError:
            raise InputError(
                path,
                f"line {line_no}, column {column + 1}",
                f"{what} {fields[column]!r} is not a number",
                "fix the line or re-export the fileset with plink",
            ) from None
    return np.asarray(values)


class PlinkSource:
    """A PLINK 1 fileset opened for reading; the ``.bim``/``.fam`` are validated."""

    def __init__(self, path):
        self.paths = fileset(path)
        self.path = self.paths["bed"]
        fam = _fields(self.paths["fam"], 6, ".fam")
        bim = _fields(self.paths["bim"], 6, ".bim")
        self.samples = np.array([r[1] for r in fam], dtype=str)
        names = self.samples
        if len(set(names.tolist())) < len(names):
            dup = next(i for i, n in enumerate(names) if n in names[:i])
            raise InputError(
                self.paths["fam"],
                f"line {dup + 1}, column 2",
                f"individual ID {str(names[dup])!r} appears twice",
                "give every individual a unique IID",
            )
        self.contig = np.array([r[0] for r in bim], dtype=str)
        cm = _numbers(self.paths["bim"], bim, 2, float, "cM position")
        bp = _numbers(self.paths["bim"], bim, 3, int, "bp position")
        # a "." ID (plink2 keeps a VCF's) is named chrom:pos:REF:ALT, as in a VCF
        self.id_missing = np.array([r[1] == "." for r in bim])
        self.ids = np.array(
            [
                marker_name(r[0], p, [r[5], *([] if r[4] == "." else [r[4]])])
                if r[1] == "."
                else r[1]
                for r, p in zip(bim, bp, strict=True)
            ],
            dtype=str,
        )
        check_unique_ids(self.ids, self.paths["bim"])
        self.position = bp.astype(np.int64)
        by_cm = (bp == 0).all()
        self.map_position = cm if by_cm else np.full(len(bim), np.nan)
        self.allele_names = np.array([[r[5], r[4]] for r in bim], dtype=str)
        contigs = dict.fromkeys(self.contig.tolist())
        self.header = VariantHeader(contigs=[(c, None) for c in contigs])
        self._check_bed()

    def _check_bed(self) -> None:
        bed = self.path
        if not bed.exists():
            raise InputError(bed, None, "no such file", "give the .bed of the fileset")
        expected = 3 + len(self.ids) * ((len(self.samples) + 3) // 4)
        with open(bed, "rb") as handle:
            magic = handle.read(3)
        if magic[:2] != b"\x6c\x1b":
            raise InputError(
                bed, "byte 1", "not a PLINK 1 .bed (bad magic number)", "re-export it"
            )
        if magic[2:] != b"\x01":
            raise InputError(
                bed,
                "byte 3",
                "individual-major .bed files are not supported",
                "re-export it with plink --make-bed (variant-major)",
            )
        size = bed.stat().st_size
        if size != expected:
            raise InputError(
                bed,
                None,
                f"{size} bytes, but {len(self.samples)} individuals x "
                f"{len(self.ids)} variants need {expected}",
                "keep the .bed, .bim and .fam of one fileset together",
            )

    def counts(self, variants: slice) -> np.ndarray:
        """A1 counts ``(N, V)`` int8 of a slice of variants; -127 = missing."""
        from bed_reader import open_bed

        with open_bed(
            self.path,
            iid_count=len(self.samples),
            sid_count=len(self.ids),
            num_threads=1,
        ) as bed:
            return bed.read(index=np.s_[:, variants], dtype="int8", order="C")

    def blocks(self, size: int = 10_000) -> Iterator[VariantBlock]:
        for start in range(0, len(self.ids), size):
            part = slice(start, min(start + size, len(self.ids)))
            count = self.counts(part).T  # (V, N)
            calls = np.stack([(count == 2), (count >= 1)], axis=-1).astype(np.int8)
            calls[count == PLINK_MISSING] = -1
            yield VariantBlock(
                self.contig[part],
                self.position[part],
                self.map_position[part],
                self.ids[part],
                self.allele_names[part],
                calls,
                id_missing=self.id_missing[part],
            )


def read_plink(path) -> Genotypes:
    """Read a PLINK 1 fileset (see module docstring) into diploid :class:`Genotypes`."""
    source = PlinkSource(path)
    return genotypes_from_blocks(source.blocks(), source.samples, source.path)


def _bed_codes(block: VariantBlock, path) -> tuple[np.ndarray, int]:
    """``.bed`` 2-bit codes ``(V, N)`` of a diploid biallelic block, and the number
    of calls with one missing copy (written as missing)."""
    if block.calls.shape[2] != 2:
        raise ValueError(
            "PLINK 1 filesets hold diploid biallelic genotypes only "
            f"(got ploidy {block.calls.shape[2]}); write VCF or VCF Zarr instead"
        )
    ids = allele_ids(block.calls, path)  # (V, N, 2): 0 missing, 1 REF, 2 ALT
    wide = (ids > 2).any((1, 2)) | (block.alleles[:, 2:] != "").any(1)
    if wide.any():
        wide = int(np.flatnonzero(wide)[0])
        raise ValueError(
            "PLINK 1 filesets hold diploid biallelic genotypes only "
            f"(variant {block.ids[wide]!r} has more than 2 alleles); "
            "write VCF or VCF Zarr instead"
        )
    missing = (ids == 0).any(-1)
    half = int((missing & (ids != 0).any(-1)).sum())
    count = (ids == 2).sum(-1)  # copies of A1 = ALT
    codes = np.choose(count, [0b11, 0b10, 0b00]).astype(np.uint8)
    codes[missing] = 0b01
    return codes, half


def _pack(codes: np.ndarray) -> bytes:
    """Variant-major ``.bed`` bytes: 4 samples a byte, the first in the low bits."""
    v, n = codes.shape
    padded = np.zeros((v, -(-n // 4) * 4), dtype=np.uint8)
    padded[:, :n] = codes
    quads = padded.reshape(v, -1, 4)
    packed = (
        quads[..., 0] | quads[..., 1] << 2 | quads[..., 2] << 4 | quads[..., 3] << 6
    )
    return packed.astype(np.uint8).tobytes()


def write_plink_blocks(blocks, samples, path) -> int:
    """Write diploid biallelic variant blocks as a PLINK 1 fileset named by ``path``.

    A1 = ALT, A2 = REF (``.`` where a site has no ALT); a call with a missing copy
    is missing (warned: PLINK 1 has no half calls), a haploid call homozygous. cM
    map positions go to column 3. The three files appear together (written
    beside, then renamed); returns the number of variants.
    """
    from .vcf_writer import map_text

    targets = fileset(path)
    targets["bed"].parent.mkdir(parents=True, exist_ok=True)
    names = [str(s) for s in samples]
    total = half = 0
    with tempfile.TemporaryDirectory(dir=targets["bed"].parent) as tmp:
        staged = fileset(Path(tmp) / targets["bed"].name)
        with open(staged["bed"], "wb") as bed, open(staged["bim"], "w") as bim:
            bed.write(b"\x6c\x1b\x01")  # magic, variant-major
            for block in blocks:
                codes, halves = _bed_codes(block, path)
                bed.write(_pack(codes))
                missing = block.id_missing
                ids = (
                    block.ids if missing is None else np.where(missing, ".", block.ids)
                )
                for j in range(len(block)):
                    cm = block.map_position[j]
                    alt = block.alleles[j, 1] if block.alleles.shape[1] > 1 else ""
                    bim.write(
                        f"{block.contig[j]}\t{ids[j]}\t"
                        f"{map_text(cm) if np.isfinite(cm) else 0}\t"
                        f"{block.position[j]}\t{alt or '.'}\t{block.alleles[j, 0]}\n"
                    )
                total, half = total + len(block), half + halves
        if total == 0:
            raise ValueError("no variants to write")
        staged["fam"].write_text("".join(f"{n}\t{n}\t0\t0\t0\t-9\n" for n in names))
        sync_tree(Path(tmp))  # modes from the umask, flushed before the renames
        for ext in ("fam", "bim", "bed"):
            os.replace(staged[ext], targets[ext])
        fsync_path(targets["bed"].parent, directory=True)
    if half:
        warnings.warn(
            f"{path}: {half} call(s) with one missing copy written as "
            "missing (PLINK 1 has no half calls)",
            InputWarning,
            stacklevel=2,
        )
    return total


def write_plink(genotypes: Genotypes, path) -> None:
    """Write diploid biallelic ``genotypes`` as a PLINK 1 fileset named by ``path``
    (placeholder alleles: A1 = ``C`` = allele id 2, A2 = ``A`` = allele id 1)."""
    from .vcf_writer import placeholder_alleles

    if genotypes.ploidy != 2 or genotypes.n_alleles > 2:
        raise ValueError(
            "PLINK 1 filesets hold diploid biallelic genotypes only "
            f"(got ploidy {genotypes.ploidy}, {genotypes.n_alleles} alleles); "
            "write VCF or VCF Zarr instead"
        )
    blocks = blocks_from_genotypes(genotypes, placeholder_alleles(2))
    write_plink_blocks(blocks, genotypes.names, path)
