"""Readers, writers and input validation of the seed tables."""

import numpy as np
import pytest

from gperceiver.data import (
    Genotypes,
    MarkerMap,
    allele_decoder,
    alleles_to_codes,
    codes_to_alleles,
)
from gperceiver.io import (
    InputError,
    InputWarning,
    match_phenotypes,
    read_chroms,
    read_dosages,
    read_markers,
    read_phenotypes,
    write_chroms,
    write_dosages,
    write_markers,
)

CHROMS = "chr\tmarker\tpos\nchr10\tm4\t5\nchr2\tm2\t9.5\nchr2\tm1\t3\nchr1\tm3\t1\n"
MARKERS = "name\tm1\tm2\tm3\tm4\ns1\t0\t3\t5\t4\ns2\t3\t3\t5\t1\n"
PHENOS = "name\tresponse\tblock\tcv\tsite\ns1\t0.5\t0\t0\tx\ns2\t-1\t1\t1\ty\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def chroms(tmp_path):
    return read_chroms(write(tmp_path, "chroms.tsv", CHROMS))


def test_allele_decoder__matches_seed_table():
    assert allele_decoder(2, 2).tolist() == [
        [0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 2]
    ]  # fmt: skip


@pytest.mark.parametrize("ploidy", range(1, 9))
def test_allele_decoder__codes_round_trip_any_ploidy(ploidy):
    n_alleles = 4 if ploidy <= 6 else 3
    table = allele_decoder(ploidy, n_alleles)
    assert (np.diff(table, axis=1) >= 0).all()  # sorted multisets
    assert len({tuple(r) for r in table.tolist()}) == len(table)
    codes = alleles_to_codes(table[None], n_alleles)[0]
    assert (codes == np.arange(len(table))).all()


def test_alleles_to_codes__uses_smallest_dtype_above_256_codes():
    # hexaploid with 6 alleles: C(12, 6) = 924 codes, more than uint8 holds
    table = allele_decoder(6, 6)
    assert len(table) == 924
    codes = alleles_to_codes(table[None], 6)
    assert codes.dtype == np.uint16
    assert (codes_to_alleles(codes, 6, 6) == table[None]).all()


def test_read_chroms__sorts_chromosomes_naturally(chroms):
    assert chroms.chrom_names == ("chr1", "chr2", "chr10")
    assert chroms.names.tolist() == ["m3", "m1", "m2", "m4"]
    assert chroms.pos.tolist() == [1.0, 3.0, 9.5, 5.0]


def test_read_markers__decodes_and_reorders_to_map(tmp_path, chroms):
    g = read_markers(write(tmp_path, "m.tsv", MARKERS), chroms)
    assert g.names.tolist() == ["s1", "s2"]
    assert g.alleles.shape == (2, 4, 2) and g.alleles.dtype == np.uint8
    # map order m3, m1, m2, m4; s1 codes 5, 0, 3, 4
    assert g.alleles[0].tolist() == [[2, 2], [0, 0], [1, 1], [1, 2]]


def test_write_markers__round_trips(tmp_path, chroms):
    g = read_markers(write(tmp_path, "m.tsv", MARKERS), chroms)
    write_markers(g, tmp_path / "out.tsv")
    write_chroms(g.markers, tmp_path / "c.tsv")
    again = read_markers(tmp_path / "out.tsv", read_chroms(tmp_path / "c.tsv"))
    assert (again.alleles == g.alleles).all()


def test_read_markers__tetraploid_multiallelic(tmp_path):
    markers, _ = MarkerMap.from_columns(["1", "1"], ["a", "b"], [1, 2])
    rng = np.random.default_rng(1)
    table = allele_decoder(4, 3)
    alleles = table[rng.integers(0, len(table), size=(5, 2))]
    g = Genotypes(alleles, np.array([f"i{i}" for i in range(5)]), markers, 3)
    write_markers(g, tmp_path / "m.tsv")
    write_chroms(markers, tmp_path / "c.tsv")
    again = read_markers(tmp_path / "m.tsv", read_chroms(tmp_path / "c.tsv"), 4, 3)
    assert (again.alleles == alleles).all()


def test_read_dosages__missing_and_round_trip(tmp_path, chroms):
    text = "name\tm1\tm2\tm3\tm4\ns1\t0\t1\t2\tNA\ns2\t\t2\t1\t0\n"
    g = read_dosages(write(tmp_path, "d.tsv", text), chroms)
    # map order m3, m1, m2, m4
    assert g.alleles[0].tolist() == [[2, 2], [1, 1], [1, 2], [0, 0]]
    assert g.alleles[1].tolist() == [[1, 2], [0, 0], [2, 2], [1, 1]]
    write_dosages(g, tmp_path / "out.tsv")
    assert (read_dosages(tmp_path / "out.tsv", chroms).alleles == g.alleles).all()


def test_read_dosages__agrees_with_codes_on_wheat(wheat_paths):
    chroms = read_chroms(wheat_paths["chroms"])
    codes = read_markers(wheat_paths["markers"], chroms)
    # inbred lines: the 0/1 DArT scores are haploid dosages
    dosage = read_dosages(wheat_paths["dosages"], chroms, ploidy=1)
    assert (dosage.alleles[..., 0] == codes.alleles[..., 0]).all()


def test_read_phenotypes__keeps_extra_columns(tmp_path):
    p = read_phenotypes(write(tmp_path, "p.tsv", PHENOS))
    assert p.extra_columns == ["site"]
    assert p.table["block"].tolist() == [0, 1]
    assert p.folds() == ["0", "1"]


def test_read_phenotypes__drops_na_responses_with_count(tmp_path):
    text = PHENOS + "s3\tNA\t0\t1\tz\ns4\t\t1\t0\tz\n"
    with pytest.warns(InputWarning, match="dropped 2 row"):
        p = read_phenotypes(write(tmp_path, "p.tsv", text))
    assert p.table["name"].tolist() == ["s1", "s2"]


def test_match_phenotypes__warns_with_count_of_unknown_names(tmp_path, chroms):
    g = read_markers(write(tmp_path, "m.tsv", MARKERS), chroms)
    text = PHENOS + "s9\t1\t0\t0\tz\ns9\t2\t1\t0\tz\n"
    p = read_phenotypes(write(tmp_path, "p.tsv", text))
    with pytest.warns(InputWarning, match=r"1 name\(s\) \(2 rows\)"):
        matched = match_phenotypes(p, g)
    assert len(matched.table) == 2


# ---- one test per documented error -------------------------------------------------


def raises(match, reader, *args, **kwargs):
    with pytest.raises(InputError, match=match) as info:
        reader(*args, **kwargs)
    assert "\n" not in str(info.value)  # one line
    return str(info.value)


def test_read_markers__raises_on_duplicate_individual(tmp_path, chroms):
    path = write(tmp_path, "m.tsv", MARKERS + "s1\t0\t0\t0\t0\n")
    msg = raises(
        r"line 4, column 'name': duplicate individual 's1'", read_markers, path, chroms
    )
    assert str(path) in msg


def test_read_chroms__raises_on_duplicate_marker(tmp_path):
    path = write(tmp_path, "c.tsv", CHROMS + "chr3\tm2\t1\n")
    raises(
        r"line 6, column 'marker': duplicate marker 'm2' \(first on line 3\)",
        read_chroms,
        path,
    )


def test_read_markers__raises_on_duplicate_marker_column(tmp_path, chroms):
    path = write(tmp_path, "m.tsv", "name\tm1\tm1\tm3\tm4\ns1\t0\t0\t0\t0\n")
    raises("marker 'm1' appears twice", read_markers, path, chroms)


def test_read_markers__raises_on_marker_absent_from_chroms(tmp_path, chroms):
    path = write(tmp_path, "m.tsv", "name\tm1\tm2\tm3\tm4\tm9\ns1\t0\t0\t0\t0\t0\n")
    raises(
        r"column 6: 1 marker\(s\) absent from the chroms table, e.g. 'm9'",
        read_markers,
        path,
        chroms,
    )


def test_read_markers__raises_on_chroms_marker_without_column(tmp_path, chroms):
    path = write(tmp_path, "m.tsv", "name\tm1\tm2\tm3\ns1\t0\t0\t0\n")
    raises(
        r"1 marker\(s\) of the chroms table have no column, e.g. 'm4'",
        read_markers,
        path,
        chroms,
    )


def test_read_markers__raises_on_code_out_of_range(tmp_path, chroms):
    path = write(tmp_path, "m.tsv", MARKERS + "s3\t0\t6\t0\t0\n")
    raises(
        r"line 4, column 'm2': code 6 is outside 0..5 for ploidy 2 with 2 alleles; set --ploidy",
        read_markers,
        path,
        chroms,
    )
    assert read_markers(path, chroms, n_alleles=3).alleles[2, 2].tolist() == [1, 3]


@pytest.mark.parametrize("token", ["1.5", "-1", "x", "NA"])
def test_read_markers__raises_on_non_integer_code(tmp_path, chroms, token):
    path = write(tmp_path, "m.tsv", MARKERS + f"s3\t0\t0\t{token}\t0\n")
    raises(
        rf"line 4, column 'm3': code '{token}' is not a non-negative integer",
        read_markers,
        path,
        chroms,
    )


def test_read_markers__raises_on_ragged_row(tmp_path, chroms):
    path = write(tmp_path, "m.tsv", MARKERS + "s3\t0\t0\t0\n")
    raises(r"line 4: 4 fields, the header has 5", read_markers, path, chroms)


def test_read_markers__raises_on_empty_cell(tmp_path, chroms):
    path = write(tmp_path, "m.tsv", MARKERS + "s3\t0\t\t0\t0\n")
    raises(r"line 4, column 'm2': code '' is empty", read_markers, path, chroms)


@pytest.mark.parametrize(
    "reader", [read_chroms, read_phenotypes, lambda p: read_markers(p, None)]
)
def test_readers__raise_on_empty_file(tmp_path, reader):
    raises("file is empty", reader, write(tmp_path, "empty.tsv", ""))


def test_read_markers__raises_on_header_only(tmp_path, chroms):
    raises(
        "no data rows",
        read_markers,
        write(tmp_path, "m.tsv", "name\tm1\tm2\tm3\tm4\n"),
        chroms,
    )


def test_read_chroms__raises_on_wrong_header(tmp_path):
    raises(
        r"line 1: header is .* expected the chroms columns",
        read_chroms,
        write(tmp_path, "c.tsv", "chrom\tmarker\tpos\n1\ta\t1\n"),
    )


def test_read_markers__raises_on_wrong_header(tmp_path, chroms):
    raises(
        r"first column is 'id', expected 'name'",
        read_markers,
        write(tmp_path, "m.tsv", "id\tm1\n"),
        chroms,
    )


def test_read_phenotypes__raises_on_wrong_header(tmp_path):
    raises(
        "expected the phenotypes columns",
        read_phenotypes,
        write(tmp_path, "p.tsv", "name\tblock\tresponse\ns1\t0\t1\n"),
    )


def test_read_phenotypes__raises_on_non_numeric_response(tmp_path):
    path = write(tmp_path, "p.tsv", PHENOS + "s3\thigh\t0\t0\tz\n")
    raises(r"line 4, column 'response': 'high' is not a number", read_phenotypes, path)


@pytest.mark.parametrize("block", ["NA", ""])
def test_read_phenotypes__raises_on_missing_environment(tmp_path, block):
    path = write(tmp_path, "p.tsv", PHENOS + f"s3\t1\t{block}\t0\tz\n")
    raises(r"line 4, column 'block': the environment is missing", read_phenotypes, path)


def test_read_phenotypes__environment_names_numbered_in_natural_order(tmp_path):
    text = "name\tresponse\tblock\ns1\t1\tenv10\ns2\t2\tenv2\ns3\t3\t-1\ns1\t4\tenv2\n"
    p = read_phenotypes(write(tmp_path, "p.tsv", text))
    assert p.environment_labels == ["-1", "env2", "env10"]
    assert p.table["block"].tolist() == [2, 1, 0, 1]
    assert p.named_environments(p.table)["block"].tolist() == [
        "env10",
        "env2",
        "-1",
        "env2",
    ]
    integers = read_phenotypes(write(tmp_path, "q.tsv", PHENOS))
    assert integers.environment_labels is None and integers.table["block"].tolist() == [
        0,
        1,
    ]


def test_read_phenotypes__trait_environment_and_name_columns(tmp_path):
    text = (
        "site\tanimal\tyield\theight\n2019_Obregon\ta1\t1.5\t90\n"
        "2018_Obregon\ta2\tNA\t80\n2019_Obregon\ta2\t2.5\t85\n"
    )
    path = write(tmp_path, "p.tsv", text)
    with pytest.warns(InputWarning, match="dropped 1 row"):
        p = read_phenotypes(path, trait="yield", environment="site", name="animal")
    assert p.table[["name", "response", "block"]].values.tolist() == [
        ["a1", 1.5, 1], ["a2", 2.5, 1],
    ]  # fmt: skip
    assert p.environment_labels == ["2018_Obregon", "2019_Obregon"]
    assert p.extra_columns == ["height"]
    heights = read_phenotypes(path, trait="height", environment="site", name="animal")
    assert heights.table["response"].tolist() == [90.0, 80.0, 85.0]
    raises(r"no column 'weight' \(given by --trait\)", read_phenotypes, path,
           trait="weight", environment="site", name="animal")  # fmt: skip
    clash = write(tmp_path, "c.tsv", text.replace("height", "block"))
    raises(r"column 'block': this column would clash with --environment site",
           read_phenotypes, clash, trait="yield", environment="site", name="animal")  # fmt: skip


def test_match_phenotypes__raises_when_no_name_matches(tmp_path, chroms):
    g = read_markers(write(tmp_path, "m.tsv", MARKERS), chroms)
    p = read_phenotypes(write(tmp_path, "p.tsv", "name\tresponse\tblock\nx\t1\t0\n"))
    raises("no phenotype name matches", match_phenotypes, p, g)


def test_read_chroms__raises_on_missing_file(tmp_path):
    raises("file not found", read_chroms, tmp_path / "nope.tsv")
