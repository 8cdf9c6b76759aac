"""Environment covariates: reading and validation, weather-driven simulation,
environment cross-validation schemes, reaction-norm GBLUP and the environment
encoder."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from gperceiver.baselines import (
    GBLUP,
    Kernel,
    ReactionNorm,
    environment_kernel,
)
from gperceiver.baselines.reaction_norm import _kronecker_reml
from gperceiver.cli import main
from gperceiver.data import Phenotypes
from gperceiver.evaluate import METHODS, cross_validate, pearson, pooled_table
from gperceiver.finetuning import finetune, load_predictor, prediction_table
from gperceiver.io import InputError, read_covariates, write_covariates
from gperceiver.nn.environment import EnvironmentConfig, EnvironmentPhenotypeModel
from gperceiver.nn.heads import HeadConfig
from gperceiver.nn.perceiver import PerceiverConfig
from gperceiver.simulate import SimulationConfig, simulate
from reml_helpers import dense_reml


def write(tmp_path, text, name="covariates.tsv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_covariates__static_one_row_per_block(tmp_path):
    path = write(tmp_path, "block\tlat\tclay\n2\t40.5\t0.3\n0\t38\t0.1\n")
    cov = read_covariates(path)
    assert cov.environments.tolist() == [0, 2] and cov.names == ["lat", "clay"]
    assert not cov.is_series
    assert cov.values.shape == (2, 1, 2)
    assert cov.values[:, 0].tolist() == [[38.0, 0.1], [40.5, 0.3]]
    assert cov.summary().tolist() == [[38.0, 0.1], [40.5, 0.3]]


def test_read_covariates__series_sorted_by_time_and_round_trips(tmp_path):
    text = "block\ttime\ttemp\train\n"
    rows = [(b, t, 20 + b + t, t % 2) for b in (1, 0) for t in (3, 1, 2, 4)]
    text += "".join(f"{b}\t{t}\t{x}\t{r}\n" for b, t, x, r in rows)
    cov = read_covariates(write(tmp_path, text))
    assert cov.is_series and cov.times.tolist() == [1, 2, 3, 4]
    assert cov.values.shape == (2, 4, 2)
    assert cov.values[1, :, 0].tolist() == [22, 23, 24, 25]  # block 1, temp by time
    # two windows: mean of times 1-2 and 3-4, per covariate
    assert cov.summary(2)[0].tolist() == [21.5, 23.5, 0.5, 0.5]
    write_covariates(cov, tmp_path / "out.tsv")
    again = read_covariates(tmp_path / "out.tsv")
    assert np.array_equal(again.values, cov.values)
    assert np.array_equal(again.times, cov.times)


@pytest.mark.parametrize(
    "text, where, problem",
    [
        ("env\tlat\n0\t1\n", "line 1", "expected the covariates columns"),
        ("block\n0\n", "line 1", "no covariate column"),
        ("block\tlat\n0\t1\nNA\t2\n", "line 3, column 'block'", "is missing"),
        ("block\tlat\n0\t1\n1\tabc\n", "line 3, column 'lat'", "not a number"),
        ("block\tlat\n0\t1\n1\tNA\n", "line 3, column 'lat'", "value is missing"),
        ("block\tlat\n0\t1\n0\t2\n", "line 3, column 'block'", "duplicate block"),
        ("block\ttime\tt\n0\t1\t5\n0\t1\t6\n", "line 3, column 'time'", "twice"),
        ("block\ttime\tt\n0\tx\t5\n", "line 2, column 'time'", "not a number"),
        (
            "block\ttime\tt\n0\t1\t5\n0\t2\t5\n1\t1\t5\n",
            "line 4, column 'time'",
            "block 1 lacks time 2",
        ),
        (
            "block\ttime\tt\n0\t1\t5\n1\t1\t5\n1\t7\t5\n",
            "line 4, column 'time'",
            "block 1 has extra time 7",
        ),
    ],
)
def test_read_covariates__raises_on_bad_input(tmp_path, text, where, problem):
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=problem) as err:
        read_covariates(path)
    assert err.value.where.startswith(where)
    assert str(path) in str(err.value)


WEATHER = SimulationConfig(
    n_individuals=150,
    n_markers=300,
    n_chromosomes=2,
    chromosome_length_bp=30_000_000,
    n_qtl=30,
    n_environments=12,
    gxe_correlation=0.3,
    heritability=0.7,
    weather_days=60,
    n_folds=5,
    seed=3,
)


@pytest.fixture(scope="module")
def weather_sim():
    return simulate(WEATHER)


def test_simulate__weather_drives_low_rank_interaction(weather_sim):
    cov = weather_sim.covariates
    assert cov.values.shape == (12, 60, 3) and cov.names == [
        "temperature",
        "rain",
        "radiation",
    ]
    assert (cov.values[:, :, 1] >= 0).all()  # rain
    wide = weather_sim.truth.pivot(index="name", columns="block", values="additive")
    centred = wide.to_numpy() - wide.to_numpy().mean(0)
    singular = np.linalg.svd(centred, compute_uv=False)
    # main effect + 3 stress sensitivities: rank 4 out of 12 environments
    assert singular[4] < 1e-8 * singular[0] < singular[3]
    # same without weather: every environment has its own random deviation
    plain = simulate(dataclasses.replace(WEATHER, weather_days=0)).truth
    wide = plain.pivot(index="name", columns="block", values="additive").to_numpy()
    assert np.linalg.svd(wide - wide.mean(0), compute_uv=False)[11] > 1e-3


def test_simulate__weather_cli_writes_covariates(tmp_path):
    out = tmp_path / "sim"
    code = main(
        ["simulate", "--out", str(out), "--individuals", "60", "--markers", "200",
         "--qtl", "20", "--environments", "3", "--weather-days", "30", "--folds", "3"]
    )  # fmt: skip
    assert code == 0
    cov = read_covariates(out / "covariates.tsv")
    assert cov.environments.tolist() == [0, 1, 2] and cov.values.shape == (3, 30, 3)


def grid_problem(n=40, m=5, seed=0):
    """A complete individuals x environments grid with interaction."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, 200))
    g = w @ w.T / 200
    x = rng.normal(size=(m, 3))
    omega = x @ x.T / 3
    ge = rng.multivariate_normal(np.zeros(n * m), np.kron(g, omega + 1.0))
    y = ge.reshape(n, m) + rng.normal(size=(n, m)) + np.arange(m)
    return g, omega, y


@pytest.mark.parametrize("interaction", [True, False])
def test_reaction_norm__kronecker_path_equals_dense_reml(interaction):
    g, omega, y = grid_problem()
    n, m = y.shape
    individuals, envs = np.repeat(np.arange(n), m), np.tile(np.arange(m), n)
    fast = _kronecker_reml(y, g, omega if interaction else None)
    dense = dense_reml(y.ravel(), g, individuals, envs, omega if interaction else None)
    assert np.allclose(fast[:4], dense[:4], rtol=1e-3)
    assert np.allclose(fast[4], dense[4], rtol=1e-3, atol=1e-6)
    assert (fast[1] > 0) == interaction


def test_reaction_norm__one_environment_main_effect_is_gblup():
    g, _, y = grid_problem(m=1)
    names = np.array([f"i{k}" for k in range(len(g))])
    kernel = Kernel(g, names)
    records = pd.DataFrame({"name": names, "response": y[:, 0], "block": 3})
    model = ReactionNorm(kernel, interaction=False).fit(records, None)
    reference = GBLUP(kernel).fit(records, None)
    assert np.allclose(model.predict(records), reference.predict(names), atol=1e-4)
    assert np.isclose(model.s2g_, reference.fit_.s2g, rtol=1e-3)


def test_reaction_norm__predicts_held_out_environment_from_weather(weather_sim):
    table, truth = weather_sim.phenotypes.table, weather_sim.truth
    kernel = Kernel.relationship(weather_sim.genotypes)
    blocks = np.arange(12)
    omega = environment_kernel(weather_sim.covariates, blocks)
    r = {True: [], False: []}
    for b in blocks:
        train, held = table[table["block"] != b], table[table["block"] == b]
        target = truth.loc[truth["block"] == b, "genetic"]
        for interaction in r:
            model = ReactionNorm(kernel, omega, blocks, interaction).fit(train, None)
            r[interaction].append(pearson(model.predict(held), target))
    assert np.mean(r[True]) > np.mean(r[False]) + 0.03, r


def recording_method(calls):
    """A registry method recording its inputs and predicting the training mean."""

    def method(train, validation, genotypes, cache):
        calls.append((train.copy(), validation.copy()))
        return np.full(len(validation), train["response"].mean())

    return method


@pytest.mark.parametrize("scheme", ["cv0", "cv00"])
def test_cross_validate__held_out_environment_never_in_training(
    weather_sim, monkeypatch, scheme
):
    calls = []
    monkeypatch.setitem(METHODS, "recorder", recording_method(calls))
    phenotypes = weather_sim.phenotypes
    predictions, accuracy = cross_validate(
        phenotypes, weather_sim.genotypes, ["recorder"], False, scheme=scheme
    )
    assert len(calls) == 12 * (1 if scheme == "cv0" else 5)
    for train, validation in calls:
        held = validation["block"].unique()
        assert len(held) == 1
        assert not train["block"].isin(held).any()
        if scheme == "cv00":
            assert not train["name"].isin(validation["name"]).any()
            assert validation["cv"].nunique() == 1
        table = phenotypes.table
        expected = table["block"] != held[0]
        if scheme == "cv00":
            expected &= ~table["name"].isin(validation["name"])
        assert sorted(train.index) == sorted(table.index[expected])
    # every record is predicted exactly once, by a model that never saw its block
    assert len(predictions) == len(phenotypes.table)
    assert not predictions.duplicated(["name", "block"]).any()
    assert set(accuracy.loc[accuracy["fold"] == "all", "block"]) == set(range(12))


def test_cross_validate__per_block_methods_refuse_new_environments(weather_sim):
    with pytest.raises(InputError, match="cannot predict a held-out environment"):
        cross_validate(
            weather_sim.phenotypes,
            weather_sim.genotypes,
            ["gblup"],
            False,
            scheme="cv0",
        )
    with pytest.raises(ValueError, match="needs environment covariates"):
        cross_validate(
            weather_sim.phenotypes,
            weather_sim.genotypes,
            ["gblup-rn"],
            False,
            scheme="cv0",
        )


def test_cross_validate__cv0_reaction_norm_beats_main_effect(weather_sim):
    _, accuracy = cross_validate(
        weather_sim.phenotypes,
        weather_sim.genotypes,
        ["gblup-main", "gblup-rn"],
        False,
        options={"covariates": weather_sim.covariates},
        scheme="cv0",
    )
    mean_r = pooled_table(accuracy)["mean"]
    assert mean_r["gblup-rn"] > mean_r["gblup-main"] + 0.05, mean_r


TINY = {"width": 16, "n_latents": 4, "self_layers": 1, "encode_iters": 1}


def tiny_model(n_times, has=(True, True, False)):
    config = PerceiverConfig(n_alleles=2, ploidy=2, n_markers=30, n_chroms=1, **TINY)
    head = HeadConfig(n_environments=3)
    environment = EnvironmentConfig(n_covariates=2, n_times=n_times, env_tokens=4)
    torch.manual_seed(0)
    covariates = torch.randn(3, n_times, 2)
    model = EnvironmentPhenotypeModel(
        config, head, environment, np.linspace(0, 1, 30), np.zeros(30, int),
        covariates, torch.tensor(has),
    )  # fmt: skip
    return model.eval()


@pytest.mark.parametrize("n_times", [1, 20])
def test_environment_model__shapes_and_rows_independent_in_eval(n_times):
    model = tiny_model(n_times)
    alleles = torch.randint(1, 3, (5, 30, 2))
    idx = torch.arange(30)
    with torch.no_grad():
        out = model(alleles, idx)
        single = model(alleles[2:3], idx)
    assert out.shape == (5, 3, 1)
    assert torch.allclose(out[2:3], single, atol=1e-5)


def test_environment_model__prediction_follows_the_covariates():
    model = tiny_model(20)
    alleles = torch.randint(1, 3, (4, 30, 2))
    idx = torch.arange(30)
    with torch.no_grad():
        torch.nn.init.normal_(model.environment_gradients.weight)
        before = model(alleles, idx)
        model.covariates[1] += torch.randn(20, 2)  # new weather in block 1
        model.covariates[2] += torch.randn(20, 2)  # block 2 has no covariates
        after = model(alleles, idx)
    assert not torch.allclose(before[:, 1], after[:, 1])
    assert torch.allclose(before[:, [0, 2]], after[:, [0, 2]])


def test_environment_model__set_covariates_grows_to_new_blocks():
    """A block beyond the model's, given block 1's covariates, predicts block 1's
    output without block 1's intercept; the old blocks do not move."""
    model = tiny_model(20)
    with torch.no_grad():
        model.intercept.normal_()
    alleles = torch.randint(1, 3, (4, 30, 2))
    idx = torch.arange(30)
    with torch.no_grad():
        before = model(alleles, idx)
        model.set_covariates(torch.tensor([4]), model.covariates[1:2].clone())
        after = model(alleles, idx)
    assert after.shape == (4, 5, 1) and model.head_config.n_environments == 5
    assert torch.allclose(after[:, :3], before)
    assert torch.allclose(after[:, 4], before[:, 1] - model.intercept[1], atol=1e-5)
    assert not model.has_covariates[3]  # block 3 got no covariates


def test_cli__predict_new_environments_from_their_covariates(tmp_path):
    """Finetune on environments 0 and 1, then predict 2 and 3 (beyond the model's
    blocks) from a covariates file; 3 has environment 0's weather."""
    data = tmp_path / "sim"
    main(["simulate", "--out", str(data), "--individuals", "50", "--markers", "120",
          "--qtl", "10", "--environments", "4", "--weather-days", "20", "--folds", "2"])  # fmt: skip
    phenotypes = pd.read_csv(data / "phenotypes.tsv", sep="\t")
    phenotypes[phenotypes["block"] < 2].to_csv(
        tmp_path / "train.tsv", sep="\t", index=False
    )
    weather = pd.read_csv(data / "covariates.tsv", sep="\t")
    weather[weather["block"] < 2].to_csv(tmp_path / "seen.tsv", sep="\t", index=False)
    new = weather.copy()
    columns = [c for c in weather.columns if c not in ("block", "time")]
    new.loc[new["block"] == 3, columns] = new.loc[new["block"] == 0, columns].to_numpy()
    new.to_csv(tmp_path / "new.tsv", sep="\t", index=False)
    genotypes = [str(data / "chroms.tsv"), str(data / "markers.tsv")]
    model = tmp_path / "model"
    assert main(["finetune", str(tmp_path / "train.tsv"), *genotypes, "--out", str(model),
                 "--covariates", str(tmp_path / "seen.tsv"), "--epochs", "2", "--width", "16",
                 "--latents", "4", "--encode-iters", "1", "--no-progress"]) == 0  # fmt: skip

    def predict(out, *extra):
        code = main(
            ["predict", *genotypes, "--model", str(model), "--out", str(out), *extra]
        )
        return code, (pd.read_csv(out, sep="\t") if out.exists() else None)

    _, seen = predict(tmp_path / "seen-pred.tsv")
    code, both = predict(
        tmp_path / "new-pred.tsv", "--covariates", str(tmp_path / "new.tsv")
    )
    assert code == 0 and sorted(both["block"].unique()) == [0, 1, 2, 3]
    wide = both.pivot(index="name", columns="block", values="prediction")
    old = seen.pivot(index="name", columns="block", values="prediction")
    # the saved standardisation is reused: seen environments predict as before
    assert np.allclose(wide[[0, 1]], old[[0, 1]], atol=1e-5)
    assert np.isfinite(wide.to_numpy()).all() and wide[2].std() > 0
    assert pearson(wide[3], wide[0]) > 0.99999  # same weather, same ranking
    assert pearson(wide[2], wide[0]) < 0.99999
    # a file with other columns or another time axis is refused, nothing written
    new.drop(columns=columns[0]).to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    code, out = predict(
        tmp_path / "bad-pred.tsv", "--covariates", str(tmp_path / "bad.tsv")
    )
    assert code == 1 and out is None
    new[new["time"] < new["time"].max()].to_csv(
        tmp_path / "short.tsv", sep="\t", index=False
    )
    code, out = predict(
        tmp_path / "short-pred.tsv", "--covariates", str(tmp_path / "short.tsv")
    )
    assert code == 1 and out is None


def test_finetune__environment_absent_from_training_gets_predictions(
    weather_sim, tmp_path
):
    table = weather_sim.phenotypes.table
    train = Phenotypes(table[table["block"] != 4], "train")
    params = {**TINY, "epochs": 2, "progress": False, "val_split": "environments"}
    finetune(
        train,
        weather_sim.genotypes,
        tmp_path / "m",
        params,
        covariates=weather_sim.covariates,
    )
    predictor = load_predictor(tmp_path / "m", weather_sim.genotypes)
    frame = prediction_table(predictor, weather_sim.genotypes, [4])
    assert len(frame) == 150 and np.isfinite(frame["prediction"]).all()
    assert frame["prediction"].std() > 0
    # its predictions come from its weather: another block's weather changes them
    member = predictor.members[0]
    with torch.no_grad():
        member.covariates[4] = member.covariates[7]
    moved = prediction_table(predictor, weather_sim.genotypes, [4])["prediction"]
    assert not np.allclose(moved, frame["prediction"])


def test_cli__evaluate_cv0_with_covariates(tmp_path):
    data = tmp_path / "sim"
    main(["simulate", "--out", str(data), "--individuals", "60", "--markers", "200",
          "--qtl", "20", "--environments", "3", "--weather-days", "30", "--folds", "3"])  # fmt: skip
    files = [str(data / f) for f in ("phenotypes.tsv", "chroms.tsv", "markers.tsv")]
    out = tmp_path / "eval"
    code = main(
        ["evaluate", *files, "--scheme", "cv0", "--covariates", str(data / "covariates.tsv"),
         "--methods", "gblup-main,gblup-rn,perceiver", "--out", str(out), "--quiet",
         "--epochs", "1", "--width", "16", "--latents", "4", "--encode-iters", "1"]
    )  # fmt: skip
    assert code == 0
    predictions = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert set(predictions["method"]) == {"gblup-main", "gblup-rn", "perceiver"}
    assert len(predictions) == 3 * 60 * 3 and predictions["prediction"].notna().all()
    assert sorted(p.name for p in (out / "models" / "perceiver").iterdir()) == [
        "fold-block-0", "fold-block-1", "fold-block-2"
    ]  # fmt: skip
    bad = tmp_path / "bad.tsv"
    bad.write_text("block\ttemp\n0\thot\n")
    code = main(["evaluate", *files, "--scheme", "cv0", "--covariates", str(bad),
                 "--methods", "gblup-rn", "--out", str(tmp_path / "e2"), "--quiet"])  # fmt: skip
    assert code == 1 and not (tmp_path / "e2").exists()


def test_finetune__raises_on_environment_options_without_support(weather_sim, tmp_path):
    phenotypes, genotypes = weather_sim.phenotypes, weather_sim.genotypes
    with pytest.raises(InputError, match="needs environment covariates"):
        finetune(phenotypes, genotypes, tmp_path / "a", {"val_split": "environments"})
    with pytest.raises(InputError, match="ordinal objective is not available"):
        finetune(
            phenotypes, genotypes, tmp_path / "b", {"objective": "ordinal"},
            covariates=weather_sim.covariates,
        )  # fmt: skip
    with pytest.raises(InputError, match="panel copies are not available"):
        finetune(
            phenotypes, genotypes, tmp_path / "c", {"panel": True},
            covariates=weather_sim.covariates,
        )  # fmt: skip
    assert not any((tmp_path / d).exists() for d in "abc")
