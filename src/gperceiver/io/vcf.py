"""Write genotypes as VCF (v4.2) with a GT field, for tools such as Beagle or bcftools.

The data model keeps no sequence, so REF/ALT are placeholder bases: allele id 1 is
REF ``A``, ids 2, 3, 4 are ALT ``C``, ``G``, ``T``, and further ids take longer
strings (``AA``, ``AC``, ...), all distinct. The GT index of allele id ``k`` is
``k - 1``; a missing copy is ``.``. Copies are unphased (``/``), any ploidy.

POS is the marker position when every position is a whole number >= 1 (bp);
otherwise (cM or fractional positions) the 1-based rank within the chromosome,
with the original position kept in ``INFO/MAPPOS``. A path ending in ``.gz`` is
gzip-compressed (readable by bcftools, htslib and Beagle).
"""

from __future__ import annotations

import datetime
import gzip
import itertools

import numpy as np

from ..data import MISSING, Genotypes
from .atomic import atomic_path

BASES = "ACGT"


def placeholder_alleles(n_alleles: int) -> list[str]:
    """``n_alleles`` distinct base strings: A, C, G, T, AA, AC, ... (index 0 = REF)."""
    out: list[str] = []
    for length in itertools.count(1):
        for letters in itertools.product(BASES, repeat=length):
            out.append("".join(letters))
            if len(out) == n_alleles:
                return out
    raise AssertionError("unreachable")


def _vcf_positions(genotypes: Genotypes) -> tuple[np.ndarray, bool]:
    """Integer POS per marker and whether they are the original positions."""
    markers = genotypes.markers
    pos = markers.pos
    if len(pos) and np.all(pos == np.round(pos)) and pos.min() >= 1:
        return pos.astype(np.int64), True
    ranks = np.zeros(len(pos), dtype=np.int64)
    for c in np.unique(markers.chrom):
        sel = np.flatnonzero(markers.chrom == c)
        ranks[sel] = np.arange(1, len(sel) + 1)  # markers are sorted by position
    return ranks, False


def _gt_table(genotypes: Genotypes) -> tuple[np.ndarray, np.ndarray]:
    """GT strings of the distinct genotypes and an (N, M) index into them."""
    n, m, p = genotypes.alleles.shape
    codes = genotypes.codes().ravel()
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    rows = genotypes.alleles.reshape(-1, p)[first]
    strings = np.array(
        [
            "/".join("." if a == MISSING else str(int(a) - 1) for a in row)
            for row in rows
        ],
        dtype=object,
    )
    return strings, inverse.reshape(n, m)


def write_vcf(genotypes: Genotypes, path, source: str = "gperceiver") -> None:
    """Write ``genotypes`` to ``path`` as VCFv4.2, one record per marker."""
    markers = genotypes.markers
    pos, original = _vcf_positions(genotypes)
    ref, *alt = placeholder_alleles(genotypes.n_alleles)
    alt_field = ",".join(alt) if alt else "."
    chroms = markers.chrom_labels().astype(str)
    strings, index = _gt_table(genotypes)

    header = [
        "##fileformat=VCFv4.2",
        f"##fileDate={datetime.date.today():%Y%m%d}",
        f"##source={source}",
        "##INFO=<ID=MAPPOS,Number=1,Type=Float,"
        'Description="Marker position in the input map (POS holds its rank)">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    ]
    for c, name in enumerate(markers.chrom_names):
        sel = markers.chrom == c
        if sel.any():
            header.append(f"##contig=<ID={name},length={int(pos[sel].max())}>")
    columns = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"]
    header.append("\t".join(columns + [str(s) for s in genotypes.names]))

    gz = str(path).endswith(".gz")
    with (
        atomic_path(path) as tmp,
        gzip.open(tmp, "wt", compresslevel=6, newline="\n")
        if gz
        else open(tmp, "w", newline="\n") as out,
    ):
        out.write("\n".join(header) + "\n")
        block = 2048  # markers per write: bounds the string table in memory
        for start in range(0, genotypes.n_markers, block):
            stop = min(start + block, genotypes.n_markers)
            calls = strings[index[:, start:stop].T]  # (markers, N)
            lines = []
            for j, row in zip(range(start, stop), calls, strict=True):
                info = "." if original else f"MAPPOS={markers.pos[j]:g}"
                fixed = (
                    f"{chroms[j]}\t{pos[j]}\t{markers.names[j]}\t{ref}\t{alt_field}"
                    f"\t.\tPASS\t{info}\tGT\t"
                )
                lines.append(fixed + "\t".join(row))
            out.write("\n".join(lines) + "\n")
