"""Genotype files by format, chosen from the name: one entry point for reading,
writing and converting.

- VCF/BCF (``.vcf``, ``.vcf.gz``, ``.vcf.bgz``, ``.bcf``): any ploidy, multi-allelic;
- PLINK 1 (``.bed`` with ``.bim`` and ``.fam``, or their prefix): diploid biallelic;
- PLINK 2 (``.pgen`` with ``.pvar`` and ``.psam``, or their prefix; read only):
  diploid, multi-allelic; a prefix with both a ``.pgen`` and a ``.bed`` is PLINK 2;
- VCF Zarr (``.zarr``, ``.vcz`` directories): read streamed or into memory;
- tables (any other name): markers (codes) or dosage TSV, with a chroms TSV.

Conversions between VCF/BCF, PLINK and VCF Zarr stream variant blocks from the
source to the target (:func:`convert_variants`), keeping REF/ALT, IDs, QUAL,
FILTER and phase as far as the target holds them, in the source's record order;
tables hold no sequence, so a table converts through :class:`Genotypes` with
placeholder REF/ALT (see :mod:`.vcf_writer`).
"""

from __future__ import annotations

from pathlib import Path

from ..data import Genotypes
from .errors import InputError
from .pgen import PGEN_SUFFIXES, PgenSource, read_pgen
from .plink import PlinkSource, read_plink, write_plink, write_plink_blocks
from .tables import read_chroms, read_dosages, read_markers, write_chroms
from .tables import write_dosages as write_dosage_table
from .tables import write_markers as write_code_table
from .variants import blocks_from_genotypes
from .vcf import VCF_SUFFIXES, VcfSource, read_vcf, write_bcf, write_vcf
from .vcf_writer import write_vcf_blocks
from .zarr_store import ZarrGenotypes, ZarrSource, read_zarr, write_zarr

FORMATS = ("vcf", "plink", "pgen", "zarr", "table")
SOURCES = ("vcf", "plink", "pgen", "zarr")  # formats read as variant blocks
TARGETS = ("vcf", "plink", "zarr")  # formats written from variant blocks


def genotype_format(path) -> str:
    """``vcf``, ``plink``, ``pgen``, ``zarr`` or ``table`` from a file name (a
    prefix is PLINK 2 when ``PREFIX.pgen`` exists, PLINK 1 when ``PREFIX.bed``)."""
    name = str(path).lower().rstrip("/")
    if name.endswith(VCF_SUFFIXES):
        return "vcf"
    if name.endswith((".bed", ".bim", ".fam")):
        return "plink"
    if name.endswith(PGEN_SUFFIXES):
        return "pgen"
    if name.endswith((".zarr", ".vcz")):
        return "zarr"
    if Path(f"{path}.pgen").is_file():
        return "pgen"
    if Path(f"{path}.bed").is_file():
        return "plink"
    return "table"


def read_genotype_file(
    path, samples=None, region=None, sites=None, stream: bool = False
) -> Genotypes:
    """Read a VCF/BCF, PLINK fileset or VCF Zarr store (not a table: it needs a map).

    ``stream=True`` returns a store as :class:`ZarrGenotypes` (read block by block);
    ``samples``/``region``/``sites`` restrict a VCF (see :class:`VcfSource`).
    """
    kind = genotype_format(path)
    if kind != "vcf" and (samples is not None or region or sites is not None):
        raise InputError(
            path, None, "samples/region/sites subsets apply to VCF input only", None
        )
    if kind == "vcf":
        return read_vcf(path, samples, region, sites)
    if kind == "plink":
        return read_plink(path)
    if kind == "pgen":
        return read_pgen(path)
    if kind == "zarr":
        return ZarrGenotypes(path) if stream else read_zarr(path)
    raise InputError(
        path, None, "a markers table needs its chroms table", "give CHROMS too"
    )


def read_table_genotypes(
    markers_path, chroms_path, ploidy: int = 2, n_alleles: int = 2, dosage=False
) -> Genotypes:
    """A markers (allele-set codes) or dosage table with its chroms table."""
    markers = read_chroms(chroms_path)
    if dosage:
        return read_dosages(markers_path, markers, ploidy=ploidy)
    return read_markers(markers_path, markers, ploidy=ploidy, n_alleles=n_alleles)


def write_genotype_file(
    genotypes: Genotypes, path, chroms_out=None, dosage: bool = False
) -> list[Path]:
    """Write ``genotypes`` in the format ``path`` names; returns the files written.

    A table also writes its chroms table to ``chroms_out``.
    """
    from .vcf import placeholder_alleles

    kind, path = genotype_format(path), Path(path)
    if kind == "vcf":
        (write_bcf if str(path).endswith(".bcf") else write_vcf)(genotypes, path)
        return [path]
    if kind == "plink":
        write_plink(genotypes, path)
        stem = path.with_suffix("")
        return [stem.with_name(stem.name + ext) for ext in (".bed", ".bim", ".fam")]
    if kind == "zarr":
        alleles = placeholder_alleles(max(1, genotypes.n_alleles))
        write_zarr(blocks_from_genotypes(genotypes, alleles), genotypes.names, path)
        return [path]
    if chroms_out is None:
        raise ValueError("a table output needs a path for its chroms table")
    (write_dosage_table if dosage else write_code_table)(genotypes, path)
    write_chroms(genotypes.markers, chroms_out)
    return [path, Path(chroms_out)]


def variant_source(path, samples=None, region=None, sites=None):
    """The file at ``path`` opened as variant blocks (``.samples``, ``.header``,
    ``.blocks()``); ``samples``/``region``/``sites`` restrict a VCF only."""
    kind = genotype_format(path)
    if kind != "vcf" and (samples is not None or region or sites is not None):
        raise InputError(
            path, None, "samples/region/sites subsets apply to VCF input only", None
        )
    if kind == "vcf":
        return VcfSource(path, samples, region, sites)
    if kind == "plink":
        return PlinkSource(path)
    if kind == "pgen":
        return PgenSource(path)
    if kind == "zarr":
        return ZarrSource(path)
    raise InputError(path, None, "not a variant file", "give VCF, PLINK or VCF Zarr")


def convert_variants(source_path, target, samples=None, region=None, sites=None) -> int:
    """Convert between VCF/BCF, PLINK 1/2 and VCF Zarr block by block (memory: one
    block of 10,000 variants), keeping REF/ALT; returns the variant count."""
    source = variant_source(source_path, samples, region, sites)
    kind = genotype_format(target)
    try:
        if kind == "zarr":
            return write_zarr(
                source.blocks(), source.samples, target, header=source.header
            )
        if kind == "vcf":
            return write_vcf_blocks(
                source.blocks(), source.samples, target, source.header
            )
        if kind == "plink":
            return write_plink_blocks(source.blocks(), source.samples, target)
    except ValueError as err:  # no variants, or the target cannot hold them
        raise InputError(source_path, None, str(err), None) from None
    raise ValueError(f"{target}: not a VCF, PLINK 1 or VCF Zarr name")


def stream_to_zarr(source_path, store, samples=None, region=None, sites=None) -> int:
    """Convert a VCF/BCF, PLINK fileset or store to a VCF Zarr store block by block."""
    return convert_variants(source_path, store, samples, region, sites)


def read_name_list(path) -> list[str]:
    """Non-empty stripped lines of a text file (sample or site names)."""
    return [
        line.strip() for line in Path(path).read_text().splitlines() if line.strip()
    ]
