"""report.html's data summary and estimated heritability, checked against direct
computation from the inputs and from variance_components.tsv."""

import re

import numpy as np
import pandas as pd
import pytest

from gperceiver.cli import main
from gperceiver.data import Phenotypes
from gperceiver.io import write_chroms, write_markers, write_phenotypes
from gperceiver.report.summary import MAF_BINS, data_summary, maf_spectrum
from gperceiver.simulate import SimulationConfig, simulate

NAMES = ["2019_Obregon", "2020_Ciudad_Obregon", "2021_Toluca"]


@pytest.fixture(scope="module")
def trial():
    data = simulate(
        SimulationConfig(
            n_individuals=90, n_markers=250, chromosome_length_bp=20_000_000,
            n_qtl=30, n_environments=3, n_folds=4, missing_rate=0.03, seed=2,
        )
    )  # fmt: skip
    table = data.phenotypes.table
    table = table.drop(index=table.index[::7])  # unequal records per environment
    named = table.assign(block=np.asarray(NAMES, dtype=object)[table["block"]])
    return data, named


def direct_maf(alleles: np.ndarray) -> np.ndarray:
    called = (alleles > 0).sum((0, 2))
    p = (alleles == 2).sum((0, 2)) / called
    return np.minimum(p, 1 - p)


def test_data_summary__numbers_equal_direct_counts(trial):
    data, named = trial
    g = data.genotypes
    codes = pd.Series(named["block"]).map({n: i for i, n in enumerate(NAMES)})
    phenotypes = Phenotypes(
        named.assign(block=codes.to_numpy()), environment_labels=NAMES
    )
    summary = data_summary(g, phenotypes)
    assert summary.n_individuals == 90 and summary.n_markers == 250
    assert summary.n_records == len(named)
    assert summary.n_phenotyped == named["name"].nunique()
    assert summary.missing_rate == pytest.approx((g.alleles == 0).mean())
    np.testing.assert_allclose(summary.maf, direct_maf(g.alleles), atol=1e-12)
    counts, _ = np.histogram(direct_maf(g.alleles), bins=MAF_BINS)
    assert maf_spectrum(summary.maf)["markers"].tolist() == counts.tolist()
    records = summary.records.set_index("environment")
    assert records.index.tolist() == NAMES
    for name, part in named.groupby("block"):
        assert records.loc[name, "records"] == len(part)
        assert records.loc[name, "mean"] == pytest.approx(part["response"].mean())


def test_evaluate_report__shows_data_summary_and_h2_over_folds(trial, tmp_path):
    data, named = trial
    g = data.genotypes
    write_phenotypes(Phenotypes(named), tmp_path / "phenos.tsv")
    write_chroms(g.markers, tmp_path / "chroms.tsv")
    write_markers(g, tmp_path / "markers.tsv")
    inputs = [str(tmp_path / f) for f in ("phenos.tsv", "chroms.tsv", "markers.tsv")]
    out = tmp_path / "cv"
    assert main(["evaluate", *inputs, "--methods", "gblup,rkhs", "--quiet",
                 "--out", str(out)]) == 0  # fmt: skip
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f"{g.n_individuals} genotyped individuals" in page
    assert f"{g.n_markers} markers" in page
    assert f"{(g.alleles == 0).mean():.2%} of the allele copies" in page
    assert (out / "maf_spectrum.png").exists()
    counts, _ = np.histogram(direct_maf(g.alleles), bins=MAF_BINS)
    row = re.search(r"<th>markers</th>(.*?)</tr>", page, re.S).group(1)
    assert [int(v) for v in re.findall(r"<td>(\d+)</td>", row)] == counts.tolist()
    for name in NAMES:
        records = (named["block"] == name).sum()
        assert re.search(rf"<th>{name}</th>\s*<td>{records}</td>", page)
    # h2: mean and sd over the 4 folds of variance_components.tsv, by name
    components = pd.read_csv(out / "variance_components.tsv", sep="\t")
    h2 = components[components["component"] == "h2"]
    assert set(h2["block"]) == set(NAMES)
    section = page[page.index("Estimated heritability") :]
    for (method, block), part in h2.groupby(["method", "block"]):
        assert len(part) == 4
        cells = rf"<th>{method}</th>\s*<td>{block}</td>\s*<td>4</td>\s*"
        cells += (
            rf"<td>{part['value'].mean():.3f}</td>\s*<td>{part['value'].std():.3f}</td>"
        )
        assert re.search(cells, section), (method, block)
