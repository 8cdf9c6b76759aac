"""VCF/BCF: read the GT field of any file htslib reads; write VCF v4.2 (or BCF).

Reading (:func:`read_vcf`, :func:`open_vcf`) goes through cyvcf2 (htslib): allele id
``k`` is GT index ``k - 1`` (REF = 1), ``.`` is missing, phasing is dropped (copies
are sorted), any ploidy as long as every call of the file has the same number of
copies. Markers are named by ID, or ``chrom:pos:REF:ALT`` where ID is ``.``;
chromosomes and positions come from CHROM and POS (``INFO/MAPPOS`` where every
record has it, as this writer leaves for cM maps).

Writing (:func:`write_vcf`):

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
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..data import MISSING, Genotypes
from .atomic import atomic_path
from .errors import InputError, InputWarning
from .variants import (
    MAX_ALLELES,
    VariantBlock,
    genotypes_from_blocks,
    integer_positions,
    marker_name,
)

VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")
FIX = "check it with `bcftools view` and fix or re-export the file"

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
    pos, original = integer_positions(markers)
    ref, *alt = placeholder_alleles(genotypes.n_alleles)
    alt_field = ",".join(alt) if alt else "."
    chroms = markers.chrom_labels().astype(str)
    strings, index = _gt_table(genotypes)

    header = [
        "##fileformat=VCFv4.2",
        f"##fileDate={datetime.date.today():%Y%m%d}",
        f"##source={source}",
        # String, not Float: htslib would round a Float to 32 bits
        "##INFO=<ID=MAPPOS,Number=1,Type=String,"
        'Description="Marker position in the input map, decimal '
        '(POS holds its rank)">',
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
                info = "." if original else f"MAPPOS={markers.pos[j]:.10g}"
                fixed = (
                    f"{chroms[j]}\t{pos[j]}\t{markers.names[j]}\t{ref}\t{alt_field}"
                    f"\t.\tPASS\t{info}\tGT\t"
                )
                lines.append(fixed + "\t".join(row))
            out.write("\n".join(lines) + "\n")


def write_bcf(genotypes: Genotypes, path, source: str = "gperceiver") -> None:
    """Write ``genotypes`` as BCF (the records :func:`write_vcf` writes)."""
    import cyvcf2

    with tempfile.TemporaryDirectory(dir=Path(path).parent) as tmp:
        text = Path(tmp) / "records.vcf"
        write_vcf(genotypes, text, source)
        with atomic_path(path) as out:
            reader = cyvcf2.VCF(str(text))
            writer = cyvcf2.Writer(str(out), reader, mode="wb")
            for record in reader:
                writer.write_record(record)
            writer.close()
            reader.close()


# -- reading ---------------------------------------------------------------------------
@contextmanager
def _htslib_messages():
    """Send C-level stderr (htslib's ``[E::...]`` lines) to a buffer while active.

    Yields a function returning what was written so far.
    """
    with tempfile.TemporaryFile(mode="w+b") as buffer:
        saved = os.dup(2)
        os.dup2(buffer.fileno(), 2)
        try:
            yield lambda: (buffer.seek(0), buffer.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _first_message(text: str, level: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(f"[{level}::"):
            return line.split("] ", 1)[-1].strip()
    return None


def _parse_region(region: str, path) -> tuple[str, int, float]:
    """``chrom`` or ``chrom:start-end`` (1-based, inclusive) -> (chrom, start, end)."""
    match = re.fullmatch(r"(.+?)(?::([\d,]+)-([\d,]+))?", region.strip())
    if not match:
        raise InputError(
            path, None, f"region {region!r} is not CHROM or CHROM:START-END", None
        )
    chrom, start, end = match.groups()
    if start is None:
        return chrom, 1, np.inf
    return chrom, int(start.replace(",", "")), int(end.replace(",", ""))


class VcfSource:
    """A VCF/BCF file opened for reading GT, optionally restricted.

    ``samples``: names to keep (file order is kept); ``region``: ``chrom`` or
    ``chrom:start-end`` (uses a .tbi/.csi index when there is one, else filters
    while reading); ``sites``: marker names (ID, or ``chrom:pos:REF:ALT``) to keep.
    """

    def __init__(self, path, samples=None, region=None, sites=None):
        import cyvcf2

        self.path = Path(path)
        if not self.path.exists():
            raise InputError(path, None, "no such file", "check the path")
        with _htslib_messages() as messages:
            try:
                header = cyvcf2.VCF(str(path), lazy=True)
            except Exception as err:  # cyvcf2 raises OSError or bare Exception
                detail = _first_message(messages(), "E") or str(err).splitlines()[0]
                raise InputError(
                    path, "header", f"not a readable VCF/BCF ({detail})", FIX
                ) from None
        formats = {
            h.info().get("ID") for h in header.header_iter() if h.type == "FORMAT"
        }
        infos = {h.info().get("ID") for h in header.header_iter() if h.type == "INFO"}
        if "GT" not in formats:
            raise InputError(
                path, "header", "no FORMAT/GT definition", "give a VCF with genotypes"
            )
        if not header.samples:
            raise InputError(path, "header", "no sample columns", "add samples")
        self.has_mappos = "MAPPOS" in infos
        self.samples = list(header.samples)
        header.close()
        if samples is not None:
            samples = [str(s) for s in samples]
            absent = sorted(set(samples) - set(self.samples))
            if absent:
                raise InputError(
                    path,
                    "header",
                    f"{len(absent)} requested sample(s) absent, e.g. {absent[0]!r}",
                    "request samples of the file",
                )
            wanted = set(samples)
            self.samples = [s for s in self.samples if s in wanted]
        self._subset = samples
        self.region = _parse_region(region, path) if region else None
        self.sites = None if sites is None else {str(s) for s in sites}

    def _records(self, reader):
        if self.region is None:
            return reader
        chrom, start, end = self.region
        indexed = any(Path(str(self.path) + ext).exists() for ext in (".tbi", ".csi"))
        if indexed:
            text = chrom if np.isinf(end) else f"{chrom}:{start}-{int(end)}"
            return reader(text)
        return (r for r in reader if r.CHROM == chrom and start <= r.POS <= end)

    def blocks(self, size: int = 10_000) -> Iterator[VariantBlock]:
        """Variant blocks of up to ``size`` records, in file order."""
        import cyvcf2

        reader = cyvcf2.VCF(str(self.path), samples=self._subset, gts012=False)
        records = iter(self._records(reader))
        ploidy, seen, found, done = None, 0, set(), False
        while not done:
            rows = []
            with _htslib_messages() as messages:
                try:
                    while len(rows) < size:
                        record = next(records, None)
                        if record is None:
                            done = True
                            break
                        seen += 1
                        row = self._row(record, seen, ploidy)
                        if row is None:
                            continue
                        ploidy = row[-1].shape[1]
                        if row[3] in found:
                            raise InputError(
                                self.path,
                                f"record {seen}",
                                f"marker ID {row[3]!r} appears twice",
                                "give every variant a unique ID, e.g. bcftools "
                                "annotate --set-id '%CHROM:%POS:%REF:%FIRST_ALT'",
                            )
                        found.add(row[3])
                        rows.append(row)
                except InputError:
                    raise
                except Exception as err:  # htslib parse errors surface as Exception
                    detail = _first_message(messages(), "E") or str(err).splitlines()[0]
                    raise InputError(
                        self.path, f"record {seen + 1}", f"htslib: {detail}", FIX
                    ) from None
                warning = _first_message(messages(), "W")
            if warning:
                warnings.warn(f"{self.path}: htslib: {warning}", InputWarning, 2)
            if rows:
                yield _stack(rows)
        reader.close()
        if self.sites is not None and len(self.sites - found):
            missing = sorted(self.sites - found)
            warnings.warn(
                f"{self.path}: {len(missing)} requested site(s) absent, "
                f"e.g. {missing[0]!r}",
                InputWarning,
                2,
            )

    def _row(self, record, index: int, ploidy: int | None):
        """(contig, pos, map position, name, alleles, calls (N, P)) or None."""
        alleles = [record.REF, *record.ALT]
        name = record.ID or marker_name(record.CHROM, record.POS, alleles)
        if self.sites is not None and name not in self.sites:
            return None
        where = f"record {index} ({record.CHROM}:{record.POS})"
        genotype = record.genotype
        if genotype is None:
            raise InputError(self.path, where, "no GT field", "give every record GT")
        calls = genotype.array()[:, :-1]  # last column: phased flag
        if (calls == -2).any():  # htslib's end-of-vector: fewer copies than others
            short = int(np.flatnonzero((calls == -2).any(1))[0])
            raise InputError(
                self.path,
                f"{where}, sample {self.samples[short]!r}",
                f"{int((calls[short] != -2).sum())} copies in one call, "
                f"{calls.shape[1]} in another",
                "give every call of the file the same ploidy",
            )
        if ploidy is not None and calls.shape[1] != ploidy:
            raise InputError(
                self.path,
                where,
                f"ploidy {calls.shape[1]}, earlier records have {ploidy}",
                "give every call of the file the same ploidy",
            )
        if len(alleles) > MAX_ALLELES:
            raise InputError(
                self.path, where, f"{len(alleles)} alleles, at most {MAX_ALLELES}", None
            )
        if calls.size and calls.max() >= len(alleles):
            raise InputError(
                self.path,
                where,
                f"GT allele index {int(calls.max())} but the site has "
                f"{len(alleles)} alleles",
                "fix the GT or the ALT column",
            )
        map_pos = record.INFO.get("MAPPOS") if self.has_mappos else None
        map_pos = np.nan if map_pos is None else float(map_pos)
        return record.CHROM, record.POS, map_pos, name, alleles, calls


def _stack(rows) -> VariantBlock:
    contig, pos, map_pos, names, alleles, calls = zip(*rows, strict=True)
    width = max(len(a) for a in alleles)
    table = np.array([[*a, *[""] * (width - len(a))] for a in alleles], dtype=str)
    return VariantBlock(
        np.asarray(contig, dtype=str),
        np.asarray(pos, dtype=np.int64),
        np.asarray(map_pos, dtype=np.float64),
        np.asarray(names, dtype=str),
        table,
        np.stack(calls).astype(np.int8),
    )


def read_vcf(path, samples=None, region=None, sites=None) -> Genotypes:
    """Read the GT field of a VCF/BCF into :class:`Genotypes` (see module docstring).

    ``samples``, ``region`` and ``sites`` restrict what is read (see
    :class:`VcfSource`).
    """
    source = VcfSource(path, samples, region, sites)
    return genotypes_from_blocks(source.blocks(), source.samples, path)
