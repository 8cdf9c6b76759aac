"""VCF/BCF and PLINK readers, `gperceiver convert`, and their one-line errors.

Files come from the tools people use: bcftools writes the VCFs, plink2 makes the
PLINK filesets from them.
"""

import gzip
import shutil
import subprocess

import numpy as np
import pytest

from gperceiver.cli import main
from gperceiver.io import read_genotype_file, read_table_genotypes
from gperceiver.io.plink import read_plink
from gperceiver.io.vcf import read_vcf

needs_bcftools = pytest.mark.skipif(
    shutil.which("bcftools") is None, reason="bcftools not installed"
)
needs_plink2 = pytest.mark.skipif(
    shutil.which("plink2") is None, reason="plink2 not installed"
)

HEADER = (
    "##fileformat=VCFv4.2\n"
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
)


def vcf_text(records, samples, contigs=("1", "2")):
    lines = [HEADER.rstrip("\n")]
    lines += [f"##contig=<ID={c},length=100000000>" for c in contigs]
    columns = "#CHROM POS ID REF ALT QUAL FILTER INFO FORMAT".split()
    lines.append("\t".join(columns + list(samples)))
    for chrom, pos, vid, ref, alt, calls in records:
        fixed = [chrom, str(pos), vid, ref, alt, ".", "PASS", ".", "GT"]
        lines.append("\t".join(fixed + list(calls)))
    return "\n".join(lines) + "\n"


def bcftools(*args):
    run = subprocess.run(["bcftools", *map(str, args)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def gt_ids(call):
    """Sorted allele ids (GT index + 1, 0 = missing) of a GT string."""
    return sorted(
        0 if a == "." else int(a) + 1 for a in call.replace("|", "/").split("/")
    )


def random_diploid_records(rng, n_samples, n_sites):
    """Biallelic diploid sites: phased and unphased calls, missing and half calls;
    ALT is the common allele at some sites (allele order must not flip)."""
    records = []
    for j in range(n_sites):
        p_alt = rng.uniform(0.05, 0.95)
        calls = []
        for _ in range(n_samples):
            a, b = (rng.random(2) < p_alt).astype(int)
            sep = "|" if rng.random() < 0.5 else "/"
            u = rng.random()
            if u < 0.05:
                calls.append("./.")
            elif u < 0.08:
                calls.append(f"./{b}")
            else:
                calls.append(f"{a}{sep}{b}")
        chrom = "1" if j < n_sites // 2 else "2"
        records.append((chrom, 1000 + 37 * j, f"snp{j}", "G", "T", calls))
    return records


@pytest.fixture(scope="module")
def bcftools_vcf(tmp_path_factory):
    if shutil.which("bcftools") is None:
        pytest.skip("bcftools not installed")
    root = tmp_path_factory.mktemp("vcf")
    rng = np.random.default_rng(11)
    samples = [f"ind{i}" for i in range(23)]
    records = random_diploid_records(rng, len(samples), 60)
    (root / "hand.vcf").write_text(vcf_text(records, samples))
    bcftools("view", "-Oz", "-o", root / "cohort.vcf.gz", root / "hand.vcf")
    bcftools("index", "-t", root / "cohort.vcf.gz")
    return root / "cohort.vcf.gz", samples, records


@needs_bcftools
def test_read_vcf__genotypes_match_the_gt_strings(bcftools_vcf):
    path, samples, records = bcftools_vcf
    g = read_vcf(path)
    assert g.names.tolist() == samples
    assert g.markers.names.tolist() == [r[2] for r in records]
    assert g.markers.chrom_labels().tolist() == [r[0] for r in records]
    assert g.markers.pos.tolist() == [r[1] for r in records]
    expected = np.array([[gt_ids(c) for c in r[5]] for r in records]).transpose(1, 0, 2)
    assert (g.alleles == expected).all()
    assert (g.alleles == 0).any(-1).mean() > 0.05  # missing and half calls kept


@needs_bcftools
def test_read_vcf__samples_region_and_sites_subsets(bcftools_vcf):
    path, samples, records = bcftools_vcf
    full = read_vcf(path)
    keep = [samples[7], samples[2], samples[19]]
    sub = read_vcf(path, samples=keep, region="2:2100-2600")
    in_region = [
        i for i, r in enumerate(records) if r[0] == "2" and 2100 <= r[1] <= 2600
    ]
    assert len(in_region) > 3
    assert sub.names.tolist() == [samples[2], samples[7], samples[19]]  # file order
    assert (sub.alleles == full.alleles[[2, 7, 19]][:, in_region]).all()
    by_id = read_vcf(path, sites=["snp5", "snp40"])
    assert by_id.markers.names.tolist() == ["snp5", "snp40"]
    assert (by_id.alleles == full.alleles[:, [5, 40]]).all()


@needs_bcftools
@needs_plink2
def test_plink2_fileset_of_a_bcftools_vcf_reads_identically(bcftools_vcf, tmp_path):
    path, samples, records = bcftools_vcf
    run = subprocess.run(
        ["plink2", "--vcf", str(path), "--vcf-half-call", "missing", "--make-bed"]
        + ["--threads", "1", "--memory", "640", "--out", str(tmp_path / "p")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    vcf, plink = read_vcf(path), read_plink(tmp_path / "p.bed")
    # allele order: PLINK's A2 is the VCF's REF, A1 its ALT, at every site
    bim = [line.split() for line in (tmp_path / "p.bim").read_text().splitlines()]
    assert [(b[5], b[4]) for b in bim] == [(r[3], r[4]) for r in records]
    assert plink.names.tolist() == vcf.names.tolist()
    assert plink.markers.fingerprint() == vcf.markers.fingerprint()
    # missingness: PLINK 1 has no half calls, so a call with a missing copy is missing
    half = (vcf.alleles == 0).any(-1) & (vcf.alleles != 0).any(-1)
    assert half.any()
    expected = vcf.alleles.copy()
    expected[half] = 0
    assert (plink.alleles == expected).all()


TETRA_RECORDS = [
    ("chrA", 120, "t1", "A", "C,G", ["0/0/1/2", "1|1|2|2", "./././.", "0/./2/2"]),
    ("chrA", 480, "t2", "T", "A,C,G", ["3/3/0/1", "0/0/0/0", "2/3/./1", "1/1/1/1"]),
    ("chrB", 77, "t3", "G", "A", ["0/1/1/1", "0|0|0|1", "1/1/1/1", "./0/0/0"]),
]


def gt_multisets(text_lines):
    return [
        [tuple(gt_ids(c)) for c in line.rstrip("\t").split("\t")] for line in text_lines
    ]


@needs_bcftools
def test_convert__tetraploid_multiallelic_round_trip(tmp_path):
    samples = ["w1", "w2", "w3", "w4"]
    (tmp_path / "hand.vcf").write_text(
        vcf_text(TETRA_RECORDS, samples, contigs=("chrA", "chrB"))
    )
    source = tmp_path / "tetra.bcf"
    bcftools("view", "-Ob", "-o", source, tmp_path / "hand.vcf")
    chain = ["tetra.zarr", "tetra.vcf.gz", "codes.tsv", "again.bcf"]
    previous = source
    for name in chain:
        args = ["convert", str(previous), str(tmp_path / name)]
        if previous.name.endswith(".tsv"):
            args += ["--chroms", str(tmp_path / "codes.chroms.tsv"), "--ploidy", "4"]
            args += ["--n-alleles", "4"]
        assert main(args) == 0
        previous = tmp_path / name
    expected = gt_multisets(["\t".join(r[5]) for r in TETRA_RECORDS])
    for name in ["tetra.vcf.gz", "again.bcf"]:
        query = bcftools("query", "-f", "[%GT\\t]\\n", tmp_path / name)
        assert gt_multisets(query.splitlines()) == expected, name
        listed = bcftools("query", "-f", "%CHROM %POS %ID\\n", tmp_path / name)
        assert listed.split() == "chrA 120 t1 chrA 480 t2 chrB 77 t3".split()
    codes = read_table_genotypes(
        tmp_path / "codes.tsv", tmp_path / "codes.chroms.tsv", ploidy=4, n_alleles=4
    )
    direct = read_genotype_file(source)
    assert direct.n_alleles == 4 and direct.ploidy == 4
    assert (codes.alleles == direct.alleles).all()
    assert (read_genotype_file(tmp_path / "tetra.zarr").alleles == direct.alleles).all()


@needs_bcftools
def test_convert__plink_zarr_tables_round_trip(bcftools_vcf, tmp_path):
    path, _, _ = bcftools_vcf
    vcf = read_vcf(path)
    assert main(["convert", str(path), str(tmp_path / "c.zarr")]) == 0
    assert (
        main(
            [
                "convert",
                str(tmp_path / "c.zarr"),
                str(tmp_path / "d.tsv"),
                "--to-dosage",
            ]
        )
        == 0
    )
    dosage = read_table_genotypes(
        tmp_path / "d.tsv", tmp_path / "d.chroms.tsv", dosage=True
    )
    complete = ~(vcf.alleles == 0).any(-1)
    assert (dosage.alleles[complete] == vcf.alleles[complete]).all()
    assert ((dosage.alleles == 0).all(-1) == ~complete).all()
    assert main(["convert", str(tmp_path / "c.zarr"), str(tmp_path / "e.bed")]) == 0
    assert main(["convert", str(tmp_path / "e.bed"), str(tmp_path / "f.zarr")]) == 0
    back = read_genotype_file(tmp_path / "f.zarr")
    assert (back.alleles == dosage.alleles).all()
    assert back.markers.fingerprint() == vcf.markers.fingerprint()


def test_convert__cm_map_survives_vcf_and_zarr(tmp_path, wheat_paths):
    # fractional positions travel as INFO/MAPPOS (VCF) and variant_MAPPOS (Zarr)
    chroms = tmp_path / "cm.tsv"
    lines = wheat_paths["chroms"].read_text().splitlines()
    rows = [lines[0]] + [
        "\t".join([c, m, f"{float(p) * 0.37:.4f}"])
        for c, m, p in (line.split("\t") for line in lines[1:])
    ]
    chroms.write_text("\n".join(rows) + "\n")
    markers = str(wheat_paths["markers"])
    assert (
        main(["convert", markers, str(tmp_path / "w.vcf"), "--chroms", str(chroms)])
        == 0
    )
    assert main(["convert", str(tmp_path / "w.vcf"), str(tmp_path / "w.zarr")]) == 0
    original = read_table_genotypes(markers, chroms)
    for name in ["w.vcf", "w.zarr"]:
        g = read_genotype_file(tmp_path / name)
        assert g.markers.fingerprint() == original.markers.fingerprint(), name
        assert (g.alleles == original.alleles).all()


def test_convert__plink_refuses_tetraploid(tmp_path, capfd):
    (tmp_path / "t.vcf").write_text(
        vcf_text(TETRA_RECORDS, ["w1", "w2", "w3", "w4"], contigs=("chrA", "chrB"))
    )
    assert main(["convert", str(tmp_path / "t.vcf"), str(tmp_path / "t.bed")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "diploid biallelic" in err
    assert not list(tmp_path.glob("t.b*")) and not list(tmp_path.glob("t.fam"))


# -- malformed input: one line on stderr, exit 1, nothing written ----------------------
def _good_records():
    return [
        ("1", 100, "a", "A", "C", ["0/1", "1/1", "0/0"]),
        ("1", 200, "b", "A", "C", ["0/0", "./.", "0/1"]),
    ]


MALFORMED_VCF = {
    "columns": (
        lambda: vcf_text(_good_records(), ["s1", "s2", "s3"]).replace("\t0/0\n", "\n"),
        "does not match the number of samples",
    ),
    "allele_index": (
        lambda: vcf_text(_good_records(), ["s1", "s2", "s3"]).replace("1/1", "1/3"),
        "GT allele index 3 but the site has 2 alleles",
    ),
    "ploidy_change": (
        lambda: vcf_text(_good_records(), ["s1", "s2", "s3"]).replace(
            "0/0\t./.\t0/1", "0/0/0\t././.\t0/1/1"
        ),
        "record 2 (1:200): ploidy 3, earlier records have 2",
    ),
    "mixed_ploidy_in_record": (
        lambda: vcf_text(_good_records(), ["s1", "s2", "s3"]).replace(
            "0/1\t1/1", "0/1/1\t1/1/1"
        ),
        "record 1 (1:100), sample 's3': 2 copies in one call, 3 in another",
    ),
    "not_vcf": (lambda: "name\tm1\nx\t1\n", "not a readable VCF/BCF"),
    "no_gt": (
        lambda: vcf_text(_good_records(), ["s1", "s2", "s3"]).replace(
            '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n', ""
        ),
        "no FORMAT/GT definition",
    ),
    "duplicate_id": (
        lambda: vcf_text(_good_records(), ["s1", "s2", "s3"]).replace("\tb\t", "\ta\t"),
        "record 2: marker ID 'a' appears twice",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_VCF))
def test_convert__raises_on_malformed_vcf(tmp_path, capfd, case):
    make, message = MALFORMED_VCF[case]
    path = tmp_path / "bad.vcf.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(make())
    assert main(["convert", str(path), str(tmp_path / "out.zarr")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"gperceiver: error: {path}") and message in err, err
    assert list(tmp_path.iterdir()) == [path]


def _plink_fileset(tmp_path):
    text = vcf_text(_good_records(), ["s1", "s2", "s3"])
    (tmp_path / "g.vcf").write_text(text)
    assert main(["convert", str(tmp_path / "g.vcf"), str(tmp_path / "g.bed")]) == 0
    return {ext: tmp_path / f"g.{ext}" for ext in ("bed", "bim", "fam")}


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-1])


def _short_bim_line(path):
    lines = path.read_text().splitlines()
    lines[1] = "\t".join(lines[1].split("\t")[:5])
    path.write_text("\n".join(lines) + "\n")


def _duplicate_iid(path):
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("s3", "s1")
    path.write_text("\n".join(lines) + "\n")


def _bad_position(path):
    path.write_text(path.read_text().replace("\t200\t", "\t2x0\t"))


def _bad_magic(path):
    path.write_bytes(b"\x00\x00" + path.read_bytes()[2:])


MALFORMED_PLINK = {
    "truncated_bed": (
        "bed",
        _truncate,
        "g.bed: 4 bytes, but 3 individuals x 2 variants need 5",
    ),
    "bad_magic": ("bed", _bad_magic, "g.bed, byte 1: not a PLINK 1 .bed"),
    "short_bim_line": (
        "bim",
        _short_bim_line,
        "g.bim, line 2: 5 fields, a .bim line has 6",
    ),
    "duplicate_iid": (
        "fam",
        _duplicate_iid,
        "g.fam, line 3, column 2: individual ID 's1' appears twice",
    ),
    "bad_position": (
        "bim",
        _bad_position,
        "g.bim, line 2, column 4: bp position '2x0'",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_PLINK))
def test_convert__raises_on_malformed_plink(tmp_path, capfd, case):
    paths = _plink_fileset(tmp_path)
    capfd.readouterr()
    ext, damage, message = MALFORMED_PLINK[case]
    damage(paths[ext])
    assert main(["convert", str(paths["bed"]), str(tmp_path / "out.vcf")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out.vcf").exists()


def test_read_genotype_file__missing_file_names_it(tmp_path, capfd):
    missing = tmp_path / "absent.vcf.gz"
    assert main(["pretrain", str(missing), "--out", str(tmp_path / "m")]) == 1
    err = capfd.readouterr().err
    assert err == f"gperceiver: error: {missing}: no such file; check the path\n"
