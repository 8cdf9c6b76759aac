"""``gperceiver convert``: genotypes between VCF/BCF, PLINK, VCF Zarr and the tables."""

from __future__ import annotations

from pathlib import Path

from .. import io
from ..io import InputError
from .options import add_genotype_options

TABLE_SUFFIXES = (".tsv", ".txt")  # markers or dosage tables


def cmd_convert(args) -> None:
    source, target = io.genotype_format(args.input), io.genotype_format(args.output)
    if target == "table" and not str(args.output).lower().endswith(TABLE_SUFFIXES):
        raise InputError(
            args.output,
            None,
            "unknown output suffix",
            "name it .vcf, .vcf.gz, .bcf, .bed, .zarr, .vcz or .tsv (a table)",
        )
    if target == "pgen":
        raise InputError(
            args.output, None, "PLINK 2 is read, not written", "write .bed (PLINK 1)"
        )
    samples = io.read_name_list(args.samples) if args.samples else None
    sites = io.read_name_list(args.sites) if args.sites else None
    if source in io.SOURCES and target in io.TARGETS:  # streamed, REF/ALT kept
        n = io.convert_variants(args.input, args.output, samples, args.region, sites)
        print(f"converted {n} variants {args.input} -> {args.output}")
        return
    if source == "table":
        if not args.chroms:
            raise InputError(
                args.input,
                None,
                "a markers table needs its chroms table",
                "give --chroms",
            )
        genotypes = io.read_table_genotypes(
            args.input, args.chroms, args.ploidy, args.n_alleles, args.dosage
        )
    else:
        genotypes = io.read_genotype_file(args.input, samples, args.region, sites)
    chroms_out = args.out_chroms or Path(args.output).with_suffix(".chroms.tsv")
    try:
        written = io.write_genotype_file(
            genotypes, args.output, chroms_out, args.to_dosage
        )
    except ValueError as err:  # the target format cannot hold these genotypes
        raise InputError(args.input, None, str(err), None) from None
    print(
        f"converted {genotypes.n_individuals} individuals x {genotypes.n_markers} "
        f"markers (ploidy {genotypes.ploidy}, {genotypes.n_alleles} alleles) -> "
        + ", ".join(map(str, written))
    )


def add_convert_command(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert genotypes between VCF/BCF, PLINK, VCF Zarr and the tables",
    )
    p.add_argument(
        "input",
        help=".vcf[.gz], .bcf, .bed or prefix (PLINK 1), .pgen or prefix (PLINK 2), "
        ".zarr, or a markers TSV",
    )
    p.add_argument("output", help="the same kinds of name; the format follows it")
    p.add_argument("--chroms", help="chroms TSV of a markers-table input")
    p.add_argument(
        "--out-chroms",
        help="chroms TSV written beside a table output (default OUTPUT.chroms.tsv)",
    )
    p.add_argument(
        "--to-dosage",
        action="store_true",
        help="write a dosage table instead of allele-set codes",
    )
    p.add_argument("--samples", help="VCF input: file of sample names to keep")
    p.add_argument("--sites", help="VCF input: file of marker IDs to keep")
    p.add_argument("--region", help="VCF input: CHROM or CHROM:START-END")
    add_genotype_options(p)
    p.set_defaults(func=cmd_convert)
