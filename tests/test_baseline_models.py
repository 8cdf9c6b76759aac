"""Saved baseline models (``gperceiver fit`` / ``predict --model``): a model fitted
on the training folds predicts new genotypes exactly as cross-validation predicts
the held-out fold, survives a save/load bit for bit, and refuses wrong input."""

import numpy as np
import pandas as pd
import pytest

from gperceiver import io
from gperceiver.baseline_model import fit_baseline
from gperceiver.baseline_storage import load_baseline, save_baseline
from gperceiver.baselines import FixedEffects, Kernel, ReactionNorm, environment_kernel
from gperceiver.cli import main
from gperceiver.data import Genotypes, MarkerMap, Phenotypes
from gperceiver.evaluate import cross_validate
from gperceiver.io import write_chroms, write_markers, write_phenotypes, write_table
from gperceiver.simulate import SimulationConfig, simulate, write_simulation


@pytest.fixture(scope="module")
def wheat(wheat_paths):
    genotypes = io.read_table_genotypes(wheat_paths["markers"], wheat_paths["chroms"])
    phenotypes = io.read_phenotypes(wheat_paths["phenotypes"])
    return genotypes, io.match_phenotypes(phenotypes, genotypes)


@pytest.fixture(scope="module")
def animals():
    config = SimulationConfig(
        n_individuals=120, n_markers=300, chromosome_length_bp=30_000_000,
        n_qtl=30, n_environments=2, n_folds=5, fixed_variance=0.3, seed=5,
    )  # fmt: skip
    return simulate(config)


def shuffled_map(genotypes: Genotypes, rows) -> Genotypes:
    """``rows`` of ``genotypes`` on a map with the markers in reverse order (other
    positions): a Perceiver model would refuse it, a baseline matches names."""
    m = genotypes.n_markers
    markers, order = MarkerMap.from_columns(
        ["other"] * m, genotypes.markers.names, np.arange(m, 0, -1)
    )
    alleles = genotypes.alleles[rows][:, order]
    return Genotypes(alleles, genotypes.names[rows], markers, genotypes.n_alleles)


def write_genotypes(genotypes: Genotypes, directory, stem="new") -> list[str]:
    write_chroms(genotypes.markers, directory / f"{stem}.chroms.tsv")
    write_markers(genotypes, directory / f"{stem}.markers.tsv")
    return [
        str(directory / f"{stem}.chroms.tsv"),
        str(directory / f"{stem}.markers.tsv"),
    ]


@pytest.mark.parametrize("method", ["gblup", "rkhs"])
def test_fit_predict__fold_0_as_new_genotypes_equals_evaluate_fold_0(
    wheat, wheat_paths, tmp_path, method
):
    genotypes, phenotypes = wheat
    expected, _ = cross_validate(
        phenotypes, genotypes, [method], progress=False, folds=["0"]
    )
    table = phenotypes.table
    training = tmp_path / "training.tsv"
    write_phenotypes(Phenotypes(table[table["cv"].astype(str) != "0"]), training)
    model = tmp_path / "model"
    genotype_files = [str(wheat_paths["chroms"]), str(wheat_paths["markers"])]
    argv = ["fit", str(training), *genotype_files, "--method", method]
    assert main([*argv, "--out", str(model)]) == 0
    fold_0 = np.flatnonzero(np.isin(genotypes.names, expected["name"]))
    new = write_genotypes(shuffled_map(genotypes, fold_0), tmp_path)
    out = tmp_path / "predictions.tsv"
    assert main(["predict", *new, "--model", str(model), "--out", str(out)]) == 0
    predicted = pd.read_csv(out, sep="\t")
    assert list(predicted.columns) == ["name", "block", "prediction", "gebv"]
    assert len(predicted) == len(fold_0) * 4  # every new line x environment
    merged = expected.merge(predicted, on=["name", "block"], suffixes=("", "_new"))
    assert len(merged) == len(expected)  # every fold-0 record
    assert np.allclose(merged["prediction_new"], merged["prediction"], atol=1e-5)
    genetic = merged["prediction"] - merged["fixed"]
    assert np.allclose(merged["gebv"], genetic, atol=1e-5)


@pytest.mark.parametrize("method", ["gblup", "rkhs", "gblup-weighted"])
def test_fit_baseline__records_equal_cross_validation_with_fixed_effects(
    animals, method
):
    """In memory, with fixed effects: a validation record's fixed and genetic
    parts are those of cross-validation's fold."""
    g, table = animals.genotypes, animals.phenotypes.table
    fixed = FixedEffects(("sex",), ("age",))
    prior = np.isin(np.arange(g.n_markers), animals.qtl) + 0.1  # the true QTL
    inputs = io.read_marker_inputs({}, g.markers)
    inputs.weights = prior if method == "gblup-weighted" else None  # others refuse it
    options = {"fixed": fixed, "marker_inputs": inputs}
    phenotypes = Phenotypes(table)
    expected, _ = cross_validate(
        phenotypes, g, [method], progress=False, options=options, folds=["0"]
    )
    train = Phenotypes(table[table["cv"].astype(str) != "0"])
    model = fit_baseline(train, g, method, fixed, marker_weights=prior)
    validation = table[table["cv"].astype(str) == "0"]
    fixed_part, genetic = model.predict_records(g, validation)
    assert np.allclose(fixed_part, expected["fixed"], atol=1e-8)
    assert np.allclose(fixed_part + genetic, expected["prediction"], atol=1e-8)
    if method == "gblup-weighted":
        assert model.info["mix"] > 0  # the prior's weights entered the effects


@pytest.mark.parametrize("method", ["gblup", "rkhs"])
def test_save_load__predicts_bit_identically(animals, tmp_path, method):
    g, table = animals.genotypes, animals.phenotypes.table
    labels = Phenotypes(table, environment_labels=["2019_Obregon", "2020_Obregon"])
    fixed = FixedEffects(("sex",), ("age",))
    model = fit_baseline(labels, g, method, fixed)
    save_baseline(model, tmp_path / "model")
    again = load_baseline(tmp_path / "model")
    new = shuffled_map(g, np.arange(20))
    before, after = model.predict_table(new), again.predict_table(new)
    assert set(before["block"]) == {"2019_Obregon", "2020_Obregon"}
    assert before.equals(after)  # every bit
    records = table.iloc[:30]
    parts = model.predict_records(g, records), again.predict_records(g, records)
    for x, y in zip(*parts, strict=True):
        assert np.array_equal(x, y)
    assert model.components().equals(again.components())
    assert set(again.components()["component"]) >= {"h2", "intercept", "sex=M", "age"}


def test_fit__refuses_wrong_inputs_in_one_line_writing_nothing(
    animals, tmp_path, capsys
):
    g = animals.genotypes
    data = tmp_path / "data"
    data.mkdir()
    write_phenotypes(animals.phenotypes, data / "phenos.tsv")
    files = [str(data / "phenos.tsv"), *write_genotypes(g, data, "all")]

    def refused(argv, *expected):
        before = sorted(p.name for p in tmp_path.iterdir())
        code = main([*map(str, argv)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1, err
        assert all(text in err[0] for text in expected), err
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written

    model = tmp_path / "model"
    refused(["fit", *files, "--method", "bayesb", "--out", model], "invalid choice")
    refused(["fit", *files, "--marker-weights", data / "phenos.tsv", "--out", model],
            "--marker-weights")  # fmt: skip
    (tmp_path / "a-file").write_text("x")
    refused(["fit", *files, "--out", tmp_path / "a-file"], "--out", "a-file")
    assert main(["fit", *files, "--out", str(model)]) == 0
    capsys.readouterr()
    fewer = g.subset(markers=np.arange(1, g.n_markers))
    new = write_genotypes(fewer, data, "fewer")
    out = tmp_path / "p.tsv"
    refused(["predict", *new, "--model", model, "--out", out],
            "fewer.markers.tsv", f"lacks 1 of the model's {g.n_markers} markers",
            repr(str(g.markers.names[0])))  # fmt: skip
    refused(["predict", *files[1:], "--model", model, "--out", out, "--uncertainty"],
            "--uncertainty")  # fmt: skip


def test_fit__gblup_weighted_needs_its_prior_and_keeps_the_mix(animals, tmp_path):
    g = animals.genotypes
    write_phenotypes(animals.phenotypes, tmp_path / "phenos.tsv")
    files = [str(tmp_path / "phenos.tsv"), *write_genotypes(g, tmp_path, "all")]
    qtl = np.isin(np.arange(g.n_markers), animals.qtl).astype(float)
    weights = tmp_path / "w.tsv"
    write_table(pd.DataFrame({"marker": g.markers.names, "weight": qtl}), weights)
    out = tmp_path / "model"
    assert main(["fit", *files, "--method", "gblup-weighted", "--out", str(out),
                 "--marker-weights", str(weights)]) == 0  # fmt: skip
    model = load_baseline(out)
    assert model.method == "gblup-weighted" and 0 <= model.info["mix"] <= 1


def test_fit_gblup_main__predicts_as_the_reaction_norm_main_effect_model(
    animals, tmp_path
):
    """``gblup-main`` saved as allele effects predicts the records and new
    genotypes as :class:`ReactionNorm` without interaction (its own REML over
    environments, environment_reml) fitted on the same records."""
    genotypes, table = animals.genotypes, animals.phenotypes.table
    fixed = FixedEffects(("sex",), ("age",))
    train = table[table["cv"].astype(int) != 0]  # fold 0's individuals: new
    model = fit_baseline(Phenotypes(train), genotypes, "gblup-main", fixed)
    save_baseline(model, tmp_path / "main")
    model = load_baseline(tmp_path / "main")
    reference = ReactionNorm(Kernel.relationship(genotypes), interaction=False,
                             fixed=fixed).fit(train, genotypes)  # fmt: skip
    test = table[table["cv"].astype(int) == 0]
    new = shuffled_map(genotypes, np.unique(genotypes.index_of(test["name"])))
    for records, individuals in ((train, genotypes), (test, new)):
        fixed_part, genetic = model.predict_records(individuals, records)
        expected = reference.predict_parts(records)
        scale = records["response"].std()
        assert np.allclose(fixed_part, expected[0], atol=1e-8 * scale)
        assert np.allclose(genetic, expected[1], atol=1e-8 * scale)
    # one genetic value per individual, every environment at its own mean
    values = model.predict_table(new)
    per_individual = values.pivot(index="name", columns="block", values="gebv")
    assert np.allclose(per_individual[0], per_individual[1])
    means = (
        values.groupby("block")["prediction"].mean()
        - values.groupby("block")["gebv"].mean()
    )
    assert np.allclose(means.diff().iloc[1], np.diff(reference.means_)[0], atol=1e-8)


def test_fit_gblup_rn__predicts_as_the_reaction_norm_and_new_environments(tmp_path):
    """``gblup-rn`` saved as allele effects per environment predicts training
    records, new genotypes (their own map) and an environment with covariates but
    no records as :class:`ReactionNorm` fitted on the same records."""
    config = SimulationConfig(
        n_individuals=80, n_markers=200, chromosome_length_bp=20_000_000, n_qtl=20,
        n_environments=5, gxe_correlation=0.3, heritability=0.7, weather_days=30,
        n_folds=4, seed=3,
    )  # fmt: skip
    data = simulate(config)
    genotypes, table, covariates = (
        data.genotypes,
        data.phenotypes.table,
        data.covariates,
    )
    train = table[(table["block"] != 4) & (table["cv"].astype(int) != 0)]
    model = fit_baseline(
        Phenotypes(train), genotypes, "gblup-rn", covariates=covariates
    )
    save_baseline(model, tmp_path / "rn")
    model = load_baseline(tmp_path / "rn")
    assert sorted(env.block for env in model.environments) == [0, 1, 2, 3, 4]
    codes = np.arange(5)
    reference = ReactionNorm(
        Kernel.relationship(genotypes), environment_kernel(covariates, codes), codes
    ).fit(train, genotypes)
    test = table[(table["block"] == 4) | (table["cv"].astype(int) == 0)]
    new = shuffled_map(genotypes, np.unique(genotypes.index_of(test["name"])))
    for records, individuals in ((train, genotypes), (test, new)):
        fixed_part, genetic = model.predict_records(individuals, records)
        expected = reference.predict_parts(records)
        scale = records["response"].std()
        assert np.allclose(fixed_part, expected[0], atol=1e-8 * scale)
        assert np.allclose(genetic, expected[1], atol=1e-8 * scale)
    # the new environment's values follow its covariates: not the main effect alone
    gebv = model.predict_table(new).pivot(index="name", columns="block", values="gebv")
    assert not np.allclose(gebv[4], gebv[0])
    # the CLI: gblup-rn needs covariates, another method refuses them
    write_simulation(data, tmp_path / "sim")
    args = ["fit", str(tmp_path / "sim/phenotypes.tsv"), str(tmp_path / "sim/chroms.tsv"),
            str(tmp_path / "sim/markers.tsv"), "--out", str(tmp_path / "cli")]  # fmt: skip
    assert main([*args, "--method", "gblup-rn"]) == 1
    cov = str(tmp_path / "sim/covariates.tsv")
    assert main([*args, "--method", "gblup", "--covariates", cov]) == 1
    assert not (tmp_path / "cli").exists()
    assert main([*args, "--method", "gblup-rn", "--covariates", cov]) == 0
    assert load_baseline(tmp_path / "cli").method == "gblup-rn"
