"""Runs of variants in VCF Zarr coding: the common currency of the VCF, PLINK and
VCF Zarr readers and writers.

A :class:`VariantBlock` holds ``V`` consecutive variants of one file as the VCF Zarr
layout stores them: ``calls`` ``(V, N, P)`` int8 allele indices (0 = REF, 1 = first
ALT, ...), ``-1`` for a missing copy, ``-2`` (fill) for a copy a call does not have
(a haploid call in a diploid file). :func:`genotypes_from_blocks` turns blocks into
:class:`Genotypes` (allele id = index + 1, 0 = missing, copies sorted; see
:func:`allele_ids` for fill) and :func:`blocks_from_genotypes` goes back. A
:class:`VariantHeader` carries what a file says about all its variants (contigs,
filters, other meta lines), so conversions keep it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..data import Genotypes, MarkerMap
from .errors import InputError

MAX_ALLELES = 127  # int8 allele indices (VCF Zarr call_genotype)
MISSING_CALL, FILL_CALL = -1, -2  # VCF Zarr's missing and fill (end-of-vector)


@dataclass
class VariantBlock:
    """``V`` variants of ``N`` samples.

    ``ids`` always holds a name; ``id_missing`` marks the ones made up for a ``.``
    ID (``chrom:pos:REF:ALT``), so writers can write ``.`` again. ``phased``,
    ``quality`` and ``filters`` are ``None`` where the source has none (unphased,
    QUAL ``.``, FILTER ``PASS``).
    """

    contig: np.ndarray  # (V,) str chromosome labels
    position: np.ndarray  # (V,) int64 POS / bp position
    map_position: np.ndarray  # (V,) float64 map position (cM), NaN where none
    ids: np.ndarray  # (V,) str marker names
    alleles: np.ndarray  # (V, K) str: REF then ALTs, "" pads shorter sites
    calls: np.ndarray  # (V, N, P) int8 allele index, -1 = missing, -2 = fill
    id_missing: np.ndarray | None = None  # (V,) bool: ID was "." in the source
    phased: np.ndarray | None = None  # (V, N) bool: call written with "|"
    quality: np.ndarray | None = None  # (V,) float32 QUAL, NaN = "."
    filters: np.ndarray | None = None  # (V, F) bool over VariantHeader.filters

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class VariantHeader:
    """What a variant file says about all its records.

    ``contigs``: names in header order with lengths (``None`` where unknown);
    ``filters``: ``(id, description)`` pairs, ``PASS`` first; ``meta``: other
    ``##key=value`` lines as ``(key, value)`` (no INFO/FORMAT/contig/FILTER lines).
    """

    contigs: list[tuple[str, int | None]] = field(default_factory=list)
    filters: list[tuple[str, str]] = field(
        default_factory=lambda: [("PASS", "All filters passed")]
    )
    meta: list[tuple[str, str]] = field(default_factory=list)


def allele_ids(calls: np.ndarray, path, first_variant=0, first_sample=0) -> np.ndarray:
    """Allele ids ``(V, N, P)`` uint8 (index + 1, 0 = missing, copies sorted) of
    int8 calls ``(V, N, P)``; the ``first_*`` offsets only name a refused call.

    Fill copies (``-2``, a call with fewer copies than the file's ploidy) follow
    plink2's reading of haploid calls: a call with exactly one copy is read as
    homozygous (``1`` in a diploid file is ``1/1``; ``.`` is ``./.``). A call with
    fill and two or more copies (a diploid call in a tetraploid file) has no such
    reading and is refused.
    """
    calls = np.asarray(calls)
    fill = calls == FILL_CALL
    if fill.any():
        calls = calls.copy()
        partial = fill.any(-1)
        short = partial & ((~fill).sum(-1) > 1)
        if short.any():
            v, n = np.argwhere(short)[0]
            raise InputError(
                path,
                f"variant {first_variant + v + 1}, sample {first_sample + n + 1}",
                f"a call with {int((~fill[v, n]).sum())} of {calls.shape[-1]} copies",
                "give every call of the file the same ploidy (or one copy: "
                "haploid calls read as homozygous)",
            )
        first = calls[..., :1]  # the one copy of a haploid call is the first
        calls = np.where(fill, first, calls)
        calls[calls == FILL_CALL] = MISSING_CALL  # a call of no copies at all
    out = calls.astype(np.uint8)
    out += 1  # -1 (missing) wraps to 0 = MISSING
    out.sort(axis=-1)
    return out


def marker_name(contig: str, pos: int, alleles: list[str]) -> str:
    """Name of a variant without an ID: ``chrom:pos:REF:ALT[,ALT]``."""
    return f"{contig}:{pos}:{alleles[0]}:{','.join(alleles[1:]) or '.'}"


def genotypes_from_blocks(blocks: Iterable[VariantBlock], samples, path) -> Genotypes:
    """Stack blocks into :class:`Genotypes`, markers sorted by chromosome, position.

    The marker position is the map position where every variant has one,
    otherwise POS. ``n_alleles`` is the largest allele count of any site.
    """
    blocks = list(blocks)
    if not blocks or sum(len(b) for b in blocks) == 0:
        raise InputError(path, None, "no variants", "give a file with variant records")
    ids = np.concatenate([b.ids for b in blocks])
    contig = np.concatenate([b.contig for b in blocks])
    position = np.concatenate([b.position for b in blocks])
    map_position = np.concatenate([b.map_position for b in blocks])
    n_alleles = max(int((b.alleles != "").sum(1).max()) for b in blocks)
    check_unique_ids(ids, path)
    pos = map_position if np.isfinite(map_position).all() else position
    markers, order = MarkerMap.from_columns(contig, ids, pos)
    ids_by_variant = allele_ids(np.concatenate([b.calls for b in blocks]), path)
    alleles = np.ascontiguousarray(ids_by_variant[order].transpose(1, 0, 2))
    return Genotypes(alleles, np.asarray(samples, dtype=str), markers, n_alleles)


def check_unique_ids(ids: np.ndarray, path) -> None:
    unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        name = unique[counts > 1][0]
        raise InputError(
            path,
            f"variant {int(first[counts > 1][0]) + 1}",
            f"marker ID {name!r} appears {int(counts[counts > 1][0])} times",
            "give every variant a unique ID, e.g. bcftools annotate "
            "--set-id '%CHROM:%POS:%REF:%FIRST_ALT'",
        )


def integer_positions(markers: MarkerMap) -> tuple[np.ndarray, bool]:
    """Integer POS per marker and whether they are the map positions themselves.

    Whole-number positions >= 1 are kept (bp); otherwise (cM, fractions) POS is the
    1-based rank within the chromosome and the map position travels beside it.
    """
    pos = markers.pos
    if len(pos) and np.all(pos == np.round(pos)) and pos.min() >= 1:
        return pos.astype(np.int64), True
    ranks = np.zeros(len(pos), dtype=np.int64)
    for c in np.unique(markers.chrom):
        sel = np.flatnonzero(markers.chrom == c)
        ranks[sel] = np.arange(1, len(sel) + 1)  # markers are sorted by position
    return ranks, False


def blocks_from_genotypes(
    genotypes: Genotypes, allele_names: list[str], size: int = 10_000
) -> Iterator[VariantBlock]:
    """Blocks of ``size`` markers of ``genotypes``; every site gets ``allele_names``."""
    markers = genotypes.markers
    if genotypes.n_alleles > MAX_ALLELES:
        raise ValueError(f"at most {MAX_ALLELES} alleles per site fit int8 calls")
    position, original = integer_positions(markers)
    map_position = np.full(len(markers), np.nan) if original else markers.pos
    contig = markers.chrom_labels().astype(str)
    for start in range(0, genotypes.n_markers, size):
        part = slice(start, min(start + size, genotypes.n_markers))
        v = part.stop - start
        calls = genotypes.alleles[:, part].astype(np.int16) - 1  # 0 -> -1
        yield VariantBlock(
            contig[part],
            position[part],
            map_position[part],
            markers.names[part].astype(str),
            np.tile(np.asarray(allele_names, dtype=str), (v, 1)),
            np.ascontiguousarray(calls.transpose(1, 0, 2)).astype(np.int8),
        )
