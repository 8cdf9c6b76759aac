"""Files as their tools write them: bio2zarr stores, vcztools reading our stores,
plink2's PLINK 1 and PLINK 2 filesets; REF/ALT through every conversion.

The source VCF is hand-made and normalised by bcftools: `.` IDs, multi-allelic
sites, QUAL, a defined FILTER, phased and unphased calls, missing and half calls,
and haploid calls on X among diploid ones.
"""

import importlib.util
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr

from gperceiver.cli import main
from gperceiver.io import InputError, read_genotype_file
from gperceiver.io.pgen import read_pgen
from gperceiver.io.vcf import read_vcf
from gperceiver.io.zarr_store import ZarrGenotypes, ZarrSource

bio2zarr_vcf = pytest.importorskip("bio2zarr.vcf")
needs_bcftools = pytest.mark.skipif(
    shutil.which("bcftools") is None, reason="bcftools not installed"
)
needs_plink2 = pytest.mark.skipif(
    shutil.which("plink2") is None, reason="plink2 not installed"
)
needs_vcztools = pytest.mark.skipif(
    importlib.util.find_spec("vcztools") is None, reason="vcztools not installed"
)
VCZTOOLS = [sys.executable, "-m", "vcztools"]  # the one installed with the tests

SAMPLES = [f"s{i}" for i in range(11)]
HEADER = [
    "##fileformat=VCFv4.2",
    '##FILTER=<ID=PASS,Description="All filters passed">',
    '##FILTER=<ID=lowq,Description="Quality below 20">',
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    "##contig=<ID=1,length=50000>",
    "##contig=<ID=2,length=60000>",
    "##contig=<ID=X,length=70000>",
]


def random_records(rng, n_sites: int, multiallelic: bool, haploid_x: bool):
    """(chrom, pos, id, ref, alt, qual, filter, calls) per site."""
    records = []
    for j in range(n_sites):
        chrom = ["1", "2", "X"][3 * j // n_sites]
        n_alt = 2 if multiallelic and j % 4 == 1 else 1
        ref, *alt = rng.choice(list("ACGT"), 1 + n_alt, replace=False).tolist()
        calls = []
        for i in range(len(SAMPLES)):
            a, b = rng.integers(0, n_alt + 1, 2)
            u = rng.random()
            if chrom == "X" and haploid_x and i < 5:  # males: one copy
                calls.append("." if u < 0.1 else str(a))
            elif u < 0.06:
                calls.append("./.")
            elif u < 0.1 and chrom != "X":
                calls.append(f"./{b}")
            else:
                calls.append(f"{a}{'|' if u < 0.5 else '/'}{b}")
        vid = "." if j % 3 else f"rs{j}"
        qual = "." if j % 5 == 0 else f"{rng.uniform(5, 60):.1f}"
        flt = (
            "lowq"
            if qual != "." and float(qual) < 20
            else ("." if j % 7 == 3 else "PASS")
        )
        records.append((chrom, 100 + 50 * j, vid, ref, ",".join(alt), qual, flt, calls))
    return records


def write_vcf_text(path, records):
    columns = "#CHROM POS ID REF ALT QUAL FILTER INFO FORMAT".split() + SAMPLES
    lines = HEADER + ["\t".join(columns)]
    for chrom, pos, vid, ref, alt, qual, flt, calls in records:
        lines.append(
            "\t".join([chrom, str(pos), vid, ref, alt, qual, flt, ".", "GT", *calls])
        )
    path.write_text("\n".join(lines) + "\n")


def tool(*args):
    run = subprocess.run([*map(str, args)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def bcftools_vcf(root, name, **kind):
    records = random_records(np.random.default_rng(len(name)), 36, **kind)
    write_vcf_text(root / f"{name}.hand.vcf", records)
    path = root / f"{name}.vcf.gz"
    tool("bcftools", "view", "-Oz", "-o", path, root / f"{name}.hand.vcf")
    tool("bcftools", "index", "-t", path)
    return path, records


@pytest.fixture(scope="module")
def vcfs(tmp_path_factory):
    if shutil.which("bcftools") is None:
        pytest.skip("bcftools not installed")
    root = tmp_path_factory.mktemp("interop")
    return {
        "mixed": bcftools_vcf(root, "mixed", multiallelic=True, haploid_x=True),
        "diploid": bcftools_vcf(root, "diploid", multiallelic=False, haploid_x=False),
    }


def bio2zarr_store(vcf, store, variants_chunk=10, samples_chunk=4):
    bio2zarr_vcf.convert(
        [str(vcf)],
        str(store),
        variants_chunk_size=variants_chunk,
        samples_chunk_size=samples_chunk,
        worker_processes=0,
        show_progress=False,
    )
    return store


def records_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_bio2zarr_store__reads_as_our_vcf_reader(vcfs, tmp_path):
    path, records = vcfs["mixed"]
    store = ZarrGenotypes(bio2zarr_store(path, tmp_path / "b.vcz"))
    vcf = read_vcf(path)
    # `.` IDs are named chrom:pos:REF:ALT, as the VCF reader names them
    expected = [
        r[2] if r[2] != "." else f"{r[0]}:{r[1]}:{r[3]}:{r[4]}" for r in records
    ]
    assert vcf.markers.names.tolist() == expected
    assert store.markers.names.tolist() == expected
    assert store.markers.fingerprint() == vcf.markers.fingerprint()
    assert store.names.tolist() == SAMPLES
    assert store.n_alleles == vcf.n_alleles == 3
    np.testing.assert_array_equal(store.alleles[:], vcf.alleles)
    # missing stays missing: one 0 per '.' copy of a diploid call
    x = [j for j, r in enumerate(records) if r[0] == "X"]
    diploid = [j for j in range(len(records)) if j not in x]
    dots = sum(c.count(".") for j in diploid for c in records[j][7])
    assert (store.alleles[:, diploid] == 0).sum() == dots > 0


def test_bio2zarr_store__haploid_calls_read_homozygous_as_plink2(vcfs, tmp_path):
    path, records = vcfs["mixed"]
    raw = zarr.open_group(bio2zarr_store(path, tmp_path / "b.vcz"), mode="r")
    x = [j for j, r in enumerate(records) if r[0] == "X"]
    assert (raw["call_genotype"][x, :5, 1] == -2).all()  # bio2zarr's fill
    store = ZarrGenotypes(tmp_path / "b.vcz")
    males = store.alleles[:5][:, x]
    for j, site in enumerate(x):
        for i in range(5):
            call = records[site][7][i]
            copy = 0 if call == "." else int(call) + 1
            assert males[i, j].tolist() == [copy, copy]
    if shutil.which("plink2") is None:
        return
    tool_args = ["--threads", "1", "--memory", "640", "--out", tmp_path / "p"]
    tool(
        "plink2", "--vcf", path, "--vcf-half-call", "missing", "--make-pgen", *tool_args
    )
    pgen = read_pgen(tmp_path / "p")
    np.testing.assert_array_equal(pgen.alleles[:, x], store.alleles[:, x])


def test_bio2zarr_store__fill_of_a_diploid_call_in_a_triploid_store_is_refused(
    vcfs, tmp_path
):
    text = "\n".join(HEADER[:1] + HEADER[3:5]) + "\n"
    text += "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ta\tb\n"
    text += "1\t10\tm1\tA\tC\t.\t.\t.\tGT\t0/1/1\t0/1\n"
    (tmp_path / "t.vcf").write_text(text)
    tool("bcftools", "view", "-Oz", "-o", tmp_path / "t.vcf.gz", tmp_path / "t.vcf")
    tool("bcftools", "index", "-t", tmp_path / "t.vcf.gz")
    store = bio2zarr_store(tmp_path / "t.vcf.gz", tmp_path / "t.vcz")
    with pytest.raises(InputError, match=r"variant 1, sample 2: a call with 2 of 3"):
        ZarrGenotypes(store).alleles[:]


def test_zarr_genotypes__blocks_by_memory_budget_not_sample_chunk(vcfs, tmp_path):
    path, _ = vcfs["mixed"]
    # one sample chunk holds every sample, as bio2zarr's 10,000 default would
    store = bio2zarr_store(path, tmp_path / "b.vcz", samples_chunk=10_000)
    assert zarr.open_group(store, mode="r")["call_genotype"].chunks[1] == 10_000
    m, p = 36, 2
    z = ZarrGenotypes(store, block_bytes=3 * m * p)
    assert z.alleles.block_samples == 3
    block = z.alleles.block(0)
    assert block.shape == (3, m, p) and block.nbytes <= 3 * m * p
    np.testing.assert_array_equal(z.alleles[:], read_vcf(path).alleles)
    assert z.alleles.blocks_read == -(-len(SAMPLES) // 3)
    default = ZarrGenotypes(store)  # 512 MiB: every sample of this tiny store
    assert default.alleles.block_samples >= len(SAMPLES)
    # conversions read a store in blocks of variants within the same budget
    blocks = list(ZarrSource(store).blocks(block_bytes=4 * len(SAMPLES) * p))
    assert [len(b) for b in blocks] == [4] * 9
    calls = zarr.open_group(store, mode="r")["call_genotype"][:]
    np.testing.assert_array_equal(np.concatenate([b.calls for b in blocks]), calls)


def test_our_store__has_the_fields_bio2zarr_writes(vcfs, tmp_path):
    path, _ = vcfs["mixed"]
    assert main(["convert", str(path), str(tmp_path / "ours.zarr")]) == 0
    ours = zarr.open_group(tmp_path / "ours.zarr", mode="r")
    theirs = zarr.open_group(bio2zarr_store(path, tmp_path / "b.vcz"), mode="r")
    same = [
        "call_genotype",
        "call_genotype_mask",
        "call_genotype_phased",
        "variant_position",
        "variant_contig",
        "variant_id",
        "variant_id_mask",
        "variant_allele",
        "variant_filter",
        "variant_length",
        "contig_id",
        "contig_length",
        "filter_id",
        "filter_description",
        "sample_id",
    ]
    for name in same:
        a, b = ours[name][:], theirs[name][:]
        if a.dtype.kind not in "biuf":
            a, b = np.asarray(a.tolist()), np.asarray(b.tolist())
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert (
            ours[name].attrs["_ARRAY_DIMENSIONS"]
            == theirs[name].attrs["_ARRAY_DIMENSIONS"]
        ), name
    # QUAL: the same float32 bits, the specification's missing NaN included
    np.testing.assert_array_equal(
        ours["variant_quality"][:].view(np.int32),
        theirs["variant_quality"][:].view(np.int32),
    )
    attrs = ours.attrs
    assert attrs["vcf_zarr_version"] == "0.4"
    assert ["fileformat", "VCFv4.2"] in attrs["vcf_meta_information"]
    header = attrs["vcf_header"].splitlines()
    assert header[0] == "##fileformat=VCFv4.2" and header[-1].split("\t")[9:] == SAMPLES
    assert '##FILTER=<ID=lowq,Description="Quality below 20">' in header


def normalised_header(text: str) -> set[str]:
    """Header lines that must agree; dropped: the file format version (vcztools
    writes VCFv4.3, bcftools keeps the source's 4.2), ``##source``/``##fileDate``
    and each tool's own ``##...Version``/``##...Command`` lines, and our writer's
    INFO/MAPPOS definition (no record uses it)."""
    keep = set()
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key = line[2:].split("=", 1)[0]
        if key in ("fileformat", "source", "fileDate") or key.endswith(
            ("Version", "Command")
        ):
            continue
        if line.startswith("##INFO=<ID=MAPPOS"):
            continue
        keep.add(line)
    return keep


@needs_vcztools
@pytest.mark.parametrize("name", ["mixed", "diploid"])
def test_vcztools_view_of_our_store_equals_bcftools_view(vcfs, tmp_path, name):
    path, _ = vcfs[name]
    store = tmp_path / "ours.zarr"
    assert main(["convert", str(path), str(store)]) == 0
    ours = tool(*VCZTOOLS, "view", store)
    source = tool("bcftools", "view", path)
    assert records_of(ours) == records_of(source)
    assert normalised_header(ours) == normalised_header(source)
    for region in ["2", "X:1500-1700", "1:120-400,X"]:  # through our region_index
        ours = tool(*VCZTOOLS, "view", "-H", "-r", region, store)
        assert ours == tool("bcftools", "view", "-H", "-r", region, path), region


@pytest.mark.parametrize(
    "chain", [["a.zarr", "b.vcf.gz"], ["a.bcf", "b.zarr", "c.vcf"]]
)
def test_convert__vcf_zarr_vcf_keeps_every_record(vcfs, tmp_path, chain):
    path, _ = vcfs["mixed"]
    previous = path
    for name in chain:
        assert main(["convert", str(previous), str(tmp_path / name)]) == 0
        previous = tmp_path / name
    back = tool("bcftools", "view", previous)
    assert records_of(back) == records_of(tool("bcftools", "view", path))
    assert normalised_header(back) == normalised_header(tool("bcftools", "view", path))


def unphased_records(text: str) -> list[list[str]]:
    """Records with GT unphased and copies sorted, half calls missing (PLINK 1)."""
    out = []
    for line in records_of(text):
        fields = line.split("\t")
        calls = []
        for call in fields[9:]:
            copies = call.replace("|", "/").split("/")
            calls.append("./." if "." in copies else "/".join(sorted(copies)))
        out.append(fields[:5] + calls)
    return out


@needs_plink2
def test_convert__vcf_plink_vcf_keeps_ref_alt_and_plink2_agrees(vcfs, tmp_path):
    path, _ = vcfs["diploid"]
    assert main(["convert", str(path), str(tmp_path / "ours.bed")]) == 0
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back.vcf")]) == 0
    source = unphased_records(tool("bcftools", "view", path))
    assert unphased_records((tmp_path / "back.vcf").read_text()) == source
    # plink2 reads our fileset into the same records
    tool(
        "plink2", "--bfile", tmp_path / "ours", "--export", "vcf", "--threads", "1",
        "--memory", "640", "--out", tmp_path / "plink2",
    )  # fmt: skip
    exported = unphased_records((tmp_path / "plink2.vcf").read_text())
    assert exported == source


def test_convert__plink_refuses_multiallelic_and_writes_nothing(vcfs, tmp_path, capfd):
    path, _ = vcfs["mixed"]
    assert main(["convert", str(path), str(tmp_path / "m.bed")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "more than 2 alleles" in err
    assert list(tmp_path.iterdir()) == []


@needs_plink2
def test_plink_prefix_and_pgen__read_as_plink2_wrote_them(vcfs, tmp_path):
    common = ["--vcf-half-call", "missing", "--threads", "1", "--memory", "640"]
    for name, make in [("diploid", "--make-bed"), ("mixed", "--make-pgen")]:
        path, records = vcfs[name]
        out = tmp_path / name
        tool("plink2", "--vcf", path, *common, make, "--out", out)
        vcf = read_vcf(path)
        fileset = read_genotype_file(out)  # the prefix alone
        by_file = read_genotype_file(f"{out}.{'bed' if name == 'diploid' else 'pgen'}")
        assert fileset.markers.fingerprint() == vcf.markers.fingerprint(), name
        assert fileset.names.tolist() == SAMPLES
        assert fileset.n_alleles == vcf.n_alleles
        half = (vcf.alleles == 0).any(-1) & (vcf.alleles != 0).any(-1)
        expected = vcf.alleles.copy()
        expected[half] = 0  # plink2 was told: half calls are missing
        np.testing.assert_array_equal(fileset.alleles, expected, err_msg=name)
        np.testing.assert_array_equal(by_file.alleles, expected, err_msg=name)
    # the PLINK 2 fileset converts to VCF with its REF/ALT (multi-allelic included)
    pgen = tmp_path / "mixed"
    assert main(["convert", str(pgen), str(tmp_path / "p.vcf")]) == 0
    ours = [r.split("\t")[:5] for r in records_of((tmp_path / "p.vcf").read_text())]
    source = [r.split("\t")[:5] for r in records_of(tool("bcftools", "view", path))]
    assert ours == source
    assert read_pgen(pgen).alleles.shape == (len(SAMPLES), len(records), 2)
