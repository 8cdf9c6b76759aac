"""write_vcf: exact records for small hand-made panels; bcftools accepts the files."""

import gzip
import shutil
import subprocess

import numpy as np
import pytest

from gperceiver.data import Genotypes, MarkerMap
from gperceiver.io.vcf import placeholder_alleles, write_vcf


def make(alleles, chroms, pos, n_alleles, names=None):
    alleles = np.asarray(alleles, dtype=np.uint8)
    m = alleles.shape[1]
    markers, order = MarkerMap.from_columns(
        chroms, [f"m{i + 1}" for i in range(m)], pos
    )
    names = names or [f"s{i + 1}" for i in range(alleles.shape[0])]
    return Genotypes(alleles[:, order], np.array(names), markers, n_alleles)


def records(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as handle:
        lines = handle.read().splitlines()
    header = [line for line in lines if line.startswith("#")]
    return header, [line for line in lines if not line.startswith("#")]


def diploid():
    # 3 individuals x 3 markers on two chromosomes; 0 = missing copy
    alleles = [
        [[1, 1], [1, 2], [0, 0]],
        [[1, 2], [2, 2], [1, 1]],
        [[0, 2], [1, 1], [2, 2]],
    ]
    return make(alleles, ["1", "1", "2"], [100, 250, 7], 2)


def test_diploid_biallelic_records(tmp_path):
    path = tmp_path / "d.vcf"
    write_vcf(diploid(), path)
    header, body = records(path)
    assert header[0] == "##fileformat=VCFv4.2"
    assert "##contig=<ID=1,length=250>" in header
    assert "##contig=<ID=2,length=7>" in header
    assert (
        header[-1]
        == "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2\ts3"
    )
    assert body == [
        "1\t100\tm1\tA\tC\t.\tPASS\t.\tGT\t0/0\t0/1\t./1",
        "1\t250\tm2\tA\tC\t.\tPASS\t.\tGT\t0/1\t1/1\t0/0",
        "2\t7\tm3\tA\tC\t.\tPASS\t.\tGT\t./.\t0/0\t1/1",
    ]


def test_tetraploid_multiallelic_cm_positions(tmp_path):
    # fractional (cM) positions: POS is the rank, the map position goes to INFO
    alleles = [
        [[1, 1, 2, 3], [0, 1, 1, 4]],
        [[0, 0, 0, 0], [2, 2, 3, 4]],
    ]
    g = make(alleles, ["chrA", "chrA"], [0.0, 12.5], 4)
    path = tmp_path / "t.vcf.gz"
    write_vcf(g, path)
    _, body = records(path)
    assert body == [
        "chrA\t1\tm1\tA\tC,G,T\t.\tPASS\tMAPPOS=0\tGT\t0/0/1/2\t./././.",
        "chrA\t2\tm2\tA\tC,G,T\t.\tPASS\tMAPPOS=12.5\tGT\t./0/0/3\t1/1/2/3",
    ]


def test_haploid(tmp_path):
    g = make([[[1], [2]], [[0], [1]]], ["1", "1"], [5, 9], 2)
    path = tmp_path / "h.vcf"
    write_vcf(g, path)
    _, body = records(path)
    assert [line.split("\t", 9)[9] for line in body] == ["0\t.", "1\t0"]


def test_placeholder_alleles_are_distinct():
    names = placeholder_alleles(255)
    assert names[:6] == ["A", "C", "G", "T", "AA", "AC"]
    assert len(set(names)) == 255


@pytest.mark.skipif(shutil.which("bcftools") is None, reason="bcftools not installed")
@pytest.mark.parametrize("suffix", [".vcf", ".vcf.gz"])
def test_bcftools_reads_it(tmp_path, suffix):
    rng = np.random.default_rng(1)
    # 5 individuals x 40 markers, triallelic, random missing copies, two chromosomes
    alleles = np.sort(rng.integers(0, 4, size=(5, 40, 2)), axis=-1)
    g = make(alleles, ["1"] * 20 + ["2"] * 20, list(range(1, 21)) * 2, 3)
    path = tmp_path / f"r{suffix}"
    write_vcf(g, path)
    run = subprocess.run(
        ["bcftools", "query", "-f", "[%GT\\t]\\n", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "warn" not in run.stderr.lower(), run.stderr
    got = [line.rstrip("\t").split("\t") for line in run.stdout.splitlines()]
    expected = [
        [
            "/".join("." if a == 0 else str(a - 1) for a in g.alleles[i, j])
            for i in range(5)
        ]
        for j in range(40)
    ]
    assert got == expected
    view = subprocess.run(
        ["bcftools", "view", "-H", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert view.returncode == 0, view.stderr
    assert len(view.stdout.splitlines()) == 40
