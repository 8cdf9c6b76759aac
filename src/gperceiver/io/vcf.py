"""VCF/BCF reading: the GT field of any file htslib reads (writing: vcf_writer).

Reading (:func:`read_vcf`, :class:`VcfSource`) goes through cyvcf2 (htslib): allele
id ``k`` is GT index ``k - 1`` (REF = 1), ``.`` is missing, phasing is dropped in
:class:`Genotypes` (copies are sorted; :class:`VcfSource` blocks keep it, with QUAL,
FILTER and REF/ALT, for conversions), any ploidy as long as every call of the file
has the same number of copies, except haploid calls in a file of higher ploidy
(male X, Y, MT), which read as homozygous (see :func:`variants.allele_ids`).
Markers are named by ID, or ``chrom:pos:REF:ALT`` where ID is ``.``; chromosomes
and positions come from CHROM and POS (``INFO/MAPPOS`` where every record has it,
as the writer leaves for cM maps).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..data import Genotypes
from .errors import InputError, InputWarning
from .variants import (
    FILL_CALL,
    MAX_ALLELES,
    VariantBlock,
    VariantHeader,
    genotypes_from_blocks,
    marker_name,
)
from .vcf_writer import placeholder_alleles, write_bcf, write_vcf, write_vcf_blocks

VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")
FIX = "check it with `bcftools view` and fix or re-export the file"
__all__ = [
    "VcfSource",
    "placeholder_alleles",
    "read_vcf",
    "write_bcf",
    "write_vcf",
    "write_vcf_blocks",
]


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
        self.header = parse_header(header.raw_header)
        self._filter_index = {f: i for i, (f, _) in enumerate(self.header.filters)}
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
                        ploidy = row[0][-1].shape[1]
                        if row[0][3] in found:
                            raise InputError(
                                self.path,
                                f"record {seen}",
                                f"marker ID {row[0][3]!r} appears twice",
                                "give every variant a unique ID, e.g. bcftools "
                                "annotate --set-id '%CHROM:%POS:%REF:%FIRST_ALT'",
                            )
                        found.add(row[0][3])
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
        array = genotype.array()
        calls, phased = array[:, :-1], array[:, -1] == 1  # last column: phase flag
        fill = calls == FILL_CALL  # htslib's end-of-vector: fewer copies than others
        short = fill.any(1) & ((~fill).sum(1) > 1)  # only haploid calls are read
        if short.any():
            short = int(np.flatnonzero(short)[0])
            raise InputError(
                self.path,
                f"{where}, sample {self.samples[short]!r}",
                f"{int((~fill[short]).sum())} copies in one call, "
                f"{calls.shape[1]} in another",
                "give every call of the file the same ploidy (haploid calls, "
                "as of male X, read as homozygous)",
            )
        if ploidy is not None and calls.shape[1] == 1 < ploidy:  # a haploid record
            pad = np.full((len(calls), ploidy - 1), FILL_CALL, calls.dtype)
            calls = np.concatenate([calls, pad], axis=1)
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
        quality = np.nan if record.QUAL is None else record.QUAL
        filters = np.zeros(len(self._filter_index), dtype=bool)
        for flag in record.FILTERS:
            if flag not in self._filter_index:  # htslib warned; keep it anyway
                self._filter_index[flag] = len(self._filter_index)
                self.header.filters.append((flag, ""))
                filters = np.append(filters, False)
            filters[self._filter_index[flag]] = True
        return (
            (record.CHROM, record.POS, map_pos, name, alleles, calls),
            (not record.ID, phased, quality, filters),
        )


def _stack(rows) -> VariantBlock:
    fields, extra = zip(*rows, strict=True)
    contig, pos, map_pos, names, alleles, calls = zip(*fields, strict=True)
    id_missing, phased, quality, filters = zip(*extra, strict=True)
    width = max(len(a) for a in alleles)
    table = np.array([[*a, *[""] * (width - len(a))] for a in alleles], dtype=str)
    n_filters = max(len(f) for f in filters)  # filters met late widen the table
    flags = np.zeros((len(rows), n_filters), dtype=bool)
    for i, f in enumerate(filters):
        flags[i, : len(f)] = f
    return VariantBlock(
        np.asarray(contig, dtype=str),
        np.asarray(pos, dtype=np.int64),
        np.asarray(map_pos, dtype=np.float64),
        np.asarray(names, dtype=str),
        table,
        np.stack(calls).astype(np.int8),
        id_missing=np.asarray(id_missing, dtype=bool),
        phased=np.stack(phased),
        quality=np.asarray(quality, dtype=np.float32),
        filters=flags,
    )


def _fields(text: str) -> dict[str, str]:
    """``ID=x,length=5,Description="a, b"`` -> dict (quotes removed)."""
    pairs = re.findall(r'([A-Za-z_]+)=("(?:[^"\\]|\\.)*"|[^,]*)', text)
    return {k: v[1:-1] if v.startswith('"') else v for k, v in pairs}


def parse_header(raw: str) -> VariantHeader:
    """Contigs, filters and other meta lines of a VCF header's text."""
    header = VariantHeader(filters=[])
    for line in raw.splitlines():
        if not line.startswith("##") or "=" not in line:
            continue
        key, value = line[2:].split("=", 1)
        if key == "contig" and value.startswith("<"):
            f = _fields(value[1:-1])
            length = f.get("length")
            header.contigs.append((f.get("ID", ""), int(length) if length else None))
        elif key == "FILTER" and value.startswith("<"):
            f = _fields(value[1:-1])
            header.filters.append((f.get("ID", ""), f.get("Description", "")))
        elif key not in ("INFO", "FORMAT"):
            header.meta.append((key, value))
    ids = [f for f, _ in header.filters]
    if "PASS" in ids:  # PASS first, as htslib and the VCF Zarr spec keep it
        header.filters.insert(0, header.filters.pop(ids.index("PASS")))
    else:
        header.filters.insert(0, ("PASS", "All filters passed"))
    return header


def read_vcf(path, samples=None, region=None, sites=None) -> Genotypes:
    """Read the GT field of a VCF/BCF into :class:`Genotypes` (see module docstring).

    ``samples``, ``region`` and ``sites`` restrict what is read (see
    :class:`VcfSource`).
    """
    source = VcfSource(path, samples, region, sites)
    return genotypes_from_blocks(source.blocks(), source.samples, path)
