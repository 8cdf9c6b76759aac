"""Selection candidates: GBLUP fitted on every record predicts every genotyped
individual, as cross-validation predicts a held-out fold."""

import numpy as np
import pandas as pd
import pytest

from gperceiver.baselines import GBLUP, FixedEffects, Kernel
from gperceiver.cli import main
from gperceiver.data import Phenotypes
from gperceiver.io import write_chroms, write_markers, write_phenotypes
from gperceiver.selection import predict_candidates
from gperceiver.simulate import SimulationConfig, simulate

SEX_AGE = FixedEffects(("sex",), ("age",))


@pytest.fixture(scope="module")
def animals():
    config = SimulationConfig(
        n_individuals=150, n_markers=400, chromosome_length_bp=30_000_000,
        n_qtl=40, n_environments=2, n_folds=10, fixed_variance=0.3, seed=3,
    )  # fmt: skip
    return simulate(config)


def write_inputs(data, directory, table) -> list[str]:
    write_phenotypes(Phenotypes(table), directory / "phenos.tsv")
    write_chroms(data.genotypes.markers, directory / "chroms.tsv")
    write_markers(data.genotypes, directory / "markers.tsv")
    return [str(directory / f) for f in ("phenos.tsv", "chroms.tsv", "markers.tsv")]


@pytest.mark.parametrize("fixed", [[], ["--fixed", "sex", "--fixed-numeric", "age"]])
def test_gblup_candidates__fold_0_as_candidates_equals_the_fold_0_split(
    animals, tmp_path, fixed
):
    table = animals.phenotypes.table
    full = write_inputs(animals, tmp_path, table)
    split = tmp_path / "split.tsv"
    assert main(["gblup", *full, "--cv", "0", "--predictions", str(split), *fixed]) == 0
    candidates_dir = tmp_path / "candidates"
    candidates_dir.mkdir()
    training = write_inputs(animals, candidates_dir, table[table["cv"] != 0])
    out = tmp_path / "gebv.tsv"
    components = tmp_path / "components.tsv"
    assert main(["gblup", *training, "--predictions", str(out),
                 "--variance-components", str(components), *fixed]) == 0  # fmt: skip
    expected = pd.read_csv(split, sep="\t")
    gebv = pd.read_csv(out, sep="\t")
    assert len(gebv) == animals.genotypes.n_individuals * 2  # every one, every block
    merged = expected.merge(gebv, on=["name", "block"], suffixes=("", "_candidate"))
    assert len(merged) == len(expected) and (merged["records"] == 0).all()
    # the genetic part is the same; without fixed effects the whole prediction
    genetic = merged["prediction"] - merged["fixed"]
    assert np.allclose(merged["gebv"], genetic, atol=1e-5)
    if not fixed:
        assert np.allclose(merged["prediction_candidate"], merged["prediction"])
    # candidates without records are predicted less reliably than the phenotyped
    phenotyped = gebv["records"] > 0
    assert gebv.loc[phenotyped, "reliability"].mean() > (
        gebv.loc[~phenotyped, "reliability"].mean() + 0.05
    )
    assert ((gebv["reliability"] >= 0) & (gebv["reliability"] <= 1)).all()
    estimated = pd.read_csv(components, sep="\t")
    h2 = estimated[estimated["component"] == "h2"]
    assert len(h2) == 2 and h2["value"].between(0.05, 0.95).all()
    if fixed:
        sex = estimated[estimated["component"] == "sex=M"]
        truth = animals.fixed_effects["sex=M"]
        assert (abs(sex["value"] - truth) < 3 * sex["se"]).all()


def test_predict_candidates__pev_and_reliability_are_those_of_the_fit(animals):
    table = animals.phenotypes.table
    g = animals.genotypes
    kernel = Kernel.relationship(g)
    candidates, _ = predict_candidates(
        Phenotypes(table), g, "gblup", SEX_AGE, relationship=kernel
    )
    block = table[table["block"] == 1]
    model = GBLUP(kernel, fixed=SEX_AGE).fit(block, None)
    mine = candidates[candidates["block"] == 1]
    assert np.allclose(mine["pev"], model.prediction_error_variance())
    reliability = 1 - mine["pev"] / (model.fit_.s2g * np.diag(kernel.matrix))
    assert np.allclose(mine["reliability"], reliability)
    assert np.allclose(mine["gebv"], model.fit_.blup)


def test_evaluate__writes_variance_components_per_block_and_fold(animals, tmp_path):
    table = animals.phenotypes.table
    table = table.assign(cv=table["cv"] % 3)
    inputs = write_inputs(animals, tmp_path, table)
    out = tmp_path / "cv"
    assert main(["evaluate", *inputs, "--methods", "gblup,rkhs", "--quiet",
                 "--out", str(out), "--fixed", "sex"]) == 0  # fmt: skip
    components = pd.read_csv(out / "variance_components.tsv", sep="\t")
    h2 = components[components["component"] == "h2"]
    assert len(h2) == 2 * 2 * 3  # methods x blocks x folds
    assert set(components["component"]) >= {"s2g", "s2e", "intercept", "sex=M"}
    assert "bandwidth" in set(
        components.loc[components["method"] == "rkhs", "component"]
    )
