"""A user's sheet read as it is: --trait (several), --environment by name, --name."""

import numpy as np
import pandas as pd

from gperceiver.cli import main
from gperceiver.io import write_chroms, write_markers, write_phenotypes
from gperceiver.simulate import SimulationConfig, simulate

SITES = np.array(["2019_Obregon", "2020_Ciudad_Obregon"])


def test_cli_evaluate__named_columns_and_environments_equal_the_coded_table(
    tmp_path,
):
    config = SimulationConfig(
        n_individuals=80, n_markers=300, chromosome_length_bp=30_000_000,
        n_qtl=30, n_environments=2, n_folds=4, seed=5,
    )  # fmt: skip
    data = simulate(config)
    coded = data.phenotypes.table
    write_chroms(data.genotypes.markers, tmp_path / "chroms.tsv")
    write_markers(data.genotypes, tmp_path / "markers.tsv")
    write_phenotypes(data.phenotypes, tmp_path / "coded.tsv")
    rng = np.random.default_rng(0)
    sheet = pd.DataFrame(
        {
            "site": SITES[coded["block"]],
            "animal": coded["name"],
            "height": coded["response"] + rng.normal(size=len(coded)),
            "yield": coded["response"],
            "cv": coded["cv"],
        }
    )
    sheet.to_csv(tmp_path / "sheet.tsv", sep="\t", index=False)
    genotypes = [str(tmp_path / "chroms.tsv"), str(tmp_path / "markers.tsv")]
    named = ["--trait", "yield,height", "--environment", "site", "--name", "animal"]
    common = ["--methods", "gblup", "--quiet"]
    out = tmp_path / "named"
    assert main(["evaluate", str(tmp_path / "sheet.tsv"), *genotypes, *common,
                 *named, "--out", str(out)]) == 0  # fmt: skip
    assert main(["evaluate", str(tmp_path / "coded.tsv"), *genotypes, *common,
                 "--out", str(tmp_path / "coded")]) == 0  # fmt: skip
    reference = pd.read_csv(tmp_path / "coded" / "predictions.tsv", sep="\t")
    by_name = pd.read_csv(out / "yield" / "predictions.tsv", sep="\t")
    assert sorted(by_name["block"].unique()) == sorted(SITES)
    assert np.allclose(by_name["prediction"], reference["prediction"], atol=1e-4)
    assert (by_name["block"] == SITES[reference["block"]]).all()
    accuracy = pd.read_csv(out / "yield" / "accuracy.tsv", sep="\t")
    expected = pd.read_csv(tmp_path / "coded" / "accuracy.tsv", sep="\t")
    assert (accuracy["block"] == SITES[expected["block"]]).all()
    assert np.allclose(accuracy["pearson_r"], expected["pearson_r"], atol=1e-3)
    heights = pd.read_csv(out / "height" / "predictions.tsv", sep="\t")
    merged = heights.merge(
        sheet, left_on=["name", "block"], right_on=["animal", "site"]
    )
    assert len(merged) == len(sheet)
    assert np.allclose(merged["response"], merged["height"], atol=1e-4)
    assert not np.allclose(heights["prediction"], by_name["prediction"])
