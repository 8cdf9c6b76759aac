"""VCF v4.2 (or BCF) writing, from variant blocks or from :class:`Genotypes`.

:func:`write_vcf_blocks` writes blocks as a file's records: REF/ALT, ID (``.``
where the source had none), QUAL, FILTER and phase (``|``) as the blocks carry
them, a haploid call in a file of higher ploidy as one copy (``1``), a missing copy
as ``.``. The header keeps the source's contigs, filters and other meta lines
(:class:`VariantHeader`); contigs the header does not list get the largest POS as
length. Memory: one block.

:func:`write_vcf` writes :class:`Genotypes`, whose data model keeps no sequence, so
REF/ALT are placeholder bases: allele id 1 is REF ``A``, ids 2, 3, 4 are ALT
``C``, ``G``, ``T``, and further ids take longer strings (``AA``, ``AC``, ...), all
distinct; copies are unphased (``/``) and sorted.

POS is the marker position when every position is a whole number >= 1 (bp);
otherwise (cM or fractional positions) the 1-based rank within the chromosome,
with the original position kept in ``INFO/MAPPOS`` (shortest text that reads back
to the same float). A path ending in ``.gz`` is gzip-compressed (readable by
bcftools, htslib and Beagle); ``.bcf`` is BCF.
"""

from __future__ import annotations

import datetime
import gzip
import itertools
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..data import Genotypes
from .atomic import atomic_path
from .variants import (
    FILL_CALL,
    VariantBlock,
    VariantHeader,
    blocks_from_genotypes,
)

BASES = "ACGT"
LINES_PER_WRITE = 2048  # markers formatted at once: bounds the strings in memory
OWN_META = ("fileformat", "fileDate", "source")  # written afresh


def placeholder_alleles(n_alleles: int) -> list[str]:
    """``n_alleles`` distinct base strings: A, C, G, T, AA, AC, ... (index 0 = REF)."""
    out: list[str] = []
    for length in itertools.count(1):
        for letters in itertools.product(BASES, repeat=length):
            out.append("".join(letters))
            if len(out) == n_alleles:
                return out
    raise AssertionError("unreachable")


def map_text(value: float) -> str:
    """Shortest decimal text that reads back as the same float (``0``, ``12.5``)."""
    return np.format_float_positional(float(value), trim="-")


def _gt_text(row: np.ndarray, phased: bool) -> str:
    copies = ["." if a < 0 else str(int(a)) for a in row if a != FILL_CALL]
    return ("|" if phased else "/").join(copies) or "."


def gt_strings(calls: np.ndarray, phased: np.ndarray | None) -> np.ndarray:
    """GT strings ``(V, N)`` of int8 calls ``(V, N, P)`` (one per distinct call)."""
    v, n, p = calls.shape
    rows = calls.reshape(-1, p).astype(np.int64) + 2  # 0..129
    flags = np.zeros(v * n, bool) if phased is None else phased.reshape(-1)
    if p <= 7:  # one int64 key per call
        keys = rows @ (131 ** np.arange(p, dtype=np.int64)) + flags * 131**p
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    else:
        table = np.column_stack([rows, flags])
        _, first, inverse = np.unique(
            table, axis=0, return_index=True, return_inverse=True
        )
    strings = np.array(
        [_gt_text(rows[i] - 2, bool(flags[i])) for i in first], dtype=object
    )
    return strings[inverse.reshape(v, n)]


def _record_lines(block: VariantBlock, filter_ids: list[str]) -> list[str]:
    ids = block.ids.astype(object)
    if block.id_missing is not None:
        ids[block.id_missing] = "."
    lines = []
    for start in range(0, len(block), LINES_PER_WRITE):
        part = slice(start, min(start + LINES_PER_WRITE, len(block)))
        phased = None if block.phased is None else block.phased[part]
        calls = gt_strings(block.calls[part], phased)
        for j, row in zip(range(part.start, part.stop), calls, strict=True):
            alt = ",".join(a for a in block.alleles[j, 1:] if a) or "."
            quality = "." if block.quality is None else block.quality[j]
            if quality != "." and not np.isfinite(quality):
                quality = "."
            elif quality != ".":
                quality = f"{float(quality):g}"
            flags = "PASS" if block.filters is None else ""
            if block.filters is not None:
                on = np.flatnonzero(block.filters[j])
                flags = ";".join(filter_ids[i] for i in on) or "."
            mappos = block.map_position[j]
            info = f"MAPPOS={map_text(mappos)}" if np.isfinite(mappos) else "."
            fixed = (
                f"{block.contig[j]}\t{block.position[j]}\t{ids[j]}\t"
                f"{block.alleles[j, 0]}\t{alt}\t{quality}\t{flags}\t{info}\tGT\t"
            )
            lines.append(fixed + "\t".join(row))
    return lines


def _header_lines(header: VariantHeader, seen: dict, samples, source: str):
    lines = [
        "##fileformat=VCFv4.2",
        f"##fileDate={datetime.date.today():%Y%m%d}",
        f"##source={source}",
    ]
    lines += [f'##FILTER=<ID={i},Description="{d}">' for i, d in header.filters]
    lines += [
        # String, not Float: htslib would round a Float to 32 bits
        "##INFO=<ID=MAPPOS,Number=1,Type=String,"
        'Description="Marker position in the input map, decimal '
        '(POS holds its rank)">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    ]
    contigs = dict(header.contigs)
    for name, top in seen.items():
        if contigs.get(name) is None:
            contigs[name] = top
    for name, length in contigs.items():
        extra = "" if length is None else f",length={length}"
        lines.append(f"##contig=<ID={name}{extra}>")
    lines += [f"##{k}={v}" for k, v in header.meta if k not in OWN_META]
    columns = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"]
    lines.append("\t".join(columns + [str(s) for s in samples]))
    return lines


def write_vcf_blocks(
    blocks: Iterable[VariantBlock],
    samples,
    path,
    header: VariantHeader | None = None,
    source: str = "gperceiver",
) -> int:
    """Write blocks as the records of a VCF (``.bcf``: BCF) at ``path``.

    The records go to a file beside the target first, so the header can list every
    contig seen; returns the number of records.
    """
    header = header or VariantHeader()
    path = Path(path)
    if path.suffix == ".bcf":
        return _write_bcf(blocks, samples, path, header, source)
    filter_ids = [i for i, _ in header.filters]
    gz = str(path).endswith(".gz")
    opener = gzip.open if gz else open
    seen: dict[str, int] = {}
    total = 0
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=tmp.parent) as d:
        body = Path(d) / "records"
        with opener(body, "wt", newline="\n") as out:
            for block in blocks:
                for name in dict.fromkeys(block.contig.tolist()):
                    top = int(block.position[block.contig == name].max())
                    seen[name] = max(seen.get(name, 0), top)
                out.write("\n".join(_record_lines(block, filter_ids)) + "\n")
                total += len(block)
        text = "\n".join(_header_lines(header, seen, samples, source)) + "\n"
        with open(tmp, "wb") as target:
            # a gzip file may hold several members: header, then the records
            target.write(gzip.compress(text.encode(), 6) if gz else text.encode())
            with open(body, "rb") as records:
                shutil.copyfileobj(records, target)
    return total


def bcf_from_text(write_text, path):
    """Write a BCF at ``path`` (atomically) from the VCF text that
    ``write_text(text_path)`` writes into a temporary file beside it; returns what
    ``write_text`` returns."""
    import cyvcf2

    with tempfile.TemporaryDirectory(dir=Path(path).parent) as tmp:
        text = Path(tmp) / "records.vcf"
        result = write_text(text)
        with atomic_path(path) as out:
            reader = cyvcf2.VCF(str(text))
            writer = cyvcf2.Writer(str(out), reader, mode="wb")
            for record in reader:
                writer.write_record(record)
            writer.close()
            reader.close()
    return result


def _write_bcf(blocks, samples, path, header, source) -> int:
    return bcf_from_text(
        lambda text: write_vcf_blocks(blocks, samples, text, header, source), path
    )


def write_vcf(genotypes: Genotypes, path, source: str = "gperceiver") -> None:
    """Write ``genotypes`` to ``path`` as VCFv4.2 (placeholder REF/ALT, see above)."""
    alleles = placeholder_alleles(max(1, genotypes.n_alleles))
    blocks = blocks_from_genotypes(genotypes, alleles)
    write_vcf_blocks(blocks, genotypes.names, path, source=source)


def write_bcf(genotypes: Genotypes, path, source: str = "gperceiver") -> None:
    """Write ``genotypes`` as BCF (the records :func:`write_vcf` writes)."""
    write_vcf(genotypes, Path(path), source)
