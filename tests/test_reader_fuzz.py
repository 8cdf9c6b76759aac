"""Property-based: every reader, fed a randomly corrupted file, either reads it
correctly or refuses it with one InputError line; never a traceback."""

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gperceiver.io import (
    InputError,
    read_chroms,
    read_covariates,
    read_dosages,
    read_markers,
    read_phenotypes,
    write_chroms,
    write_genotype_file,
    write_markers,
    write_phenotypes,
)
from gperceiver.io.vcf import read_vcf, write_vcf
from gperceiver.io.zarr_store import read_zarr
from gperceiver.simulate import SimulationConfig, simulate

TOKENS = ["", "x", "-1", "NA", ".", "9999", "1.5", "1e400", "nan", " ", "é", "3\t4"]
FUZZ = settings(
    max_examples=25,
    derandomize=True,  # the same cases on every run: CI never reddens by chance
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("valid")
    data = simulate(
        SimulationConfig(n_individuals=12, n_markers=15, n_qtl=2, n_folds=2)
    )
    write_chroms(data.genotypes.markers, out / "chroms.tsv")
    write_markers(data.genotypes, out / "markers.tsv")
    write_phenotypes(data.phenotypes, out / "phenotypes.tsv")
    write_vcf(data.genotypes, out / "g.vcf")
    (out / "covariates.tsv").write_text("block\ttemp\train\n0\t20.5\t3\n1\t18\t4.25\n")
    write_genotype_file(data.genotypes, out / "g.zarr")
    return out, data.genotypes


@st.composite
def corruptions(draw, text: str) -> str:
    """``text`` with one to three random edits of fields, lines or bytes."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "drop", "dup", "cut", "header"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if not lines:
            break
        if kind == "field":
            fields = lines[i].split("\t")
            j = draw(st.integers(0, len(fields) - 1))
            fields[j] = draw(st.sampled_from(TOKENS))
            lines[i] = "\t".join(fields)
        elif kind == "drop":
            del lines[i]
        elif kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        else:
            lines[0] = "\t".join(reversed(lines[0].split("\t")))
    return "\n".join(lines) + ("\n" if lines else "")


def read_or_refuse(read):
    """Call ``read``; an InputError must be one line. Returns the result or None."""
    try:
        return read()
    except InputError as err:
        assert "\n" not in str(err)
        return None


@FUZZ
@given(data=st.data())
def test_tables__corrupt_input_reads_or_is_refused(files, tmp_path, data):
    out, genotypes = files
    markers = read_chroms(out / "chroms.tsv")
    cases = {
        "chroms.tsv": lambda p: read_chroms(p),
        "markers.tsv": lambda p: read_markers(p, markers),
        "phenotypes.tsv": lambda p: read_phenotypes(p),
        "covariates.tsv": lambda p: read_covariates(p),
    }
    name = data.draw(st.sampled_from(sorted(cases)))
    path = tmp_path / name
    path.write_text(data.draw(corruptions((out / name).read_text())))
    result = read_or_refuse(lambda: cases[name](path))
    if name == "markers.tsv" and result is not None:
        # what was read is what the file says: the codes of the kept rows
        back = read_markers(out / "markers.tsv", markers)
        rows = back.index_of(result.names)
        same = (result.alleles == back.alleles[rows]).all(axis=(1, 2))
        assert same.any() or len(result.names) == 0
    if name == "markers.tsv":  # the same text as dosages: also refused or read
        read_or_refuse(lambda: read_dosages(path, markers))


@FUZZ
@given(data=st.data())
def test_vcf__corrupt_input_reads_or_is_refused(files, tmp_path, data):
    out, genotypes = files
    path = tmp_path / "g.vcf"
    text = (out / "g.vcf").read_text()
    header = [line for line in text.splitlines() if line.startswith("##")]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("##"))
    path.write_text("\n".join(header) + "\n" + data.draw(corruptions(body)))
    result = read_or_refuse(lambda: read_vcf(path))
    if result is not None:
        assert result.alleles.shape[2] >= 1 and np.all(result.alleles <= 255)


@FUZZ
@given(
    victim=st.sampled_from(
        [
            "call_genotype",
            "variant_position",
            "sample_id",
            "variant_contig",
            "contig_id",
        ]
    ),
    how=st.sampled_from(["delete", "empty_chunks"]),
)
def test_zarr__damaged_store_reads_or_is_refused(files, tmp_path, victim, how):
    out, _ = files
    store = tmp_path / "g.zarr"
    if store.exists():
        shutil.rmtree(store)
    shutil.copytree(out / "g.zarr", store)
    target = store / victim
    if how == "delete":
        shutil.rmtree(target, ignore_errors=True)
        (store / ".zmetadata").unlink(missing_ok=True)
        (store / "zarr.json").unlink(missing_ok=True)
    else:
        for chunk in target.rglob("*"):
            if chunk.is_file() and not chunk.name.startswith((".z", "zarr.json")):
                chunk.write_bytes(b"")
    read_or_refuse(lambda: read_zarr(store))
