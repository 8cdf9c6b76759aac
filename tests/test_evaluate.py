"""Cross-validation loop, accuracy tables, plots, and the wheat reference numbers."""

import time

import numpy as np
import pandas as pd
import pytest

from gperceiver.data import Genotypes, MarkerMap, Phenotypes
from gperceiver.evaluate import (
    METHODS,
    cross_validate,
    format_accuracy,
    pearson,
    per_environment,
    pooled_table,
    single_split,
)
from gperceiver.io import InputError, read_chroms, read_markers, read_phenotypes
from gperceiver.report import plot_accuracy, plot_observed_vs_predicted

# Pooled GBLUP r per environment for the 10 folds shipped with the data (wheat.sets).
WHEAT_GBLUP_REFERENCE = [0.503, 0.466, 0.376, 0.462]


@pytest.fixture
def small_data():
    """40 individuals, 2 blocks, 4 folds; block 1 lacks 5 individuals."""
    rng = np.random.default_rng(0)
    n, m = 40, 80
    alleles = np.sort(rng.integers(1, 3, size=(n, m, 2)), -1).astype(np.uint8)
    markers, _ = MarkerMap.from_columns(
        ["1"] * m, [f"m{j}" for j in range(m)], range(m)
    )
    names = np.array([f"i{k}" for k in range(n)])
    genotypes = Genotypes(alleles, names, markers, 2)
    folds = (np.arange(n) % 4).astype(str)
    table = pd.DataFrame(
        {
            "name": np.concatenate([names, names[5:]]),
            "response": rng.normal(size=2 * n - 5),
            "block": np.repeat([0, 1], [n, n - 5]),
            "cv": np.concatenate([folds, folds[5:]]),
            "site": np.repeat(["north", "south"], [n, n - 5]),
        }
    )
    return Phenotypes(table, extra_columns=["site"]), genotypes


def spy_method(calls):
    """A per-block method recording its inputs and predicting the training mean
    (as its fixed part)."""

    def method(train, genotypes, validation, cache):
        calls.append((train.copy(), validation["name"].to_numpy()))
        k = len(validation)
        return np.full(k, train["response"].mean()), np.zeros(k)

    return method


def test_every_row_is_validated_once_training_on_the_other_folds(
    small_data, monkeypatch
):
    phenotypes, genotypes = small_data
    calls = []
    monkeypatch.setitem(METHODS, "spy", per_environment(spy_method(calls)))
    predictions, _ = cross_validate(phenotypes, genotypes, ["spy"], progress=False)
    assert len(calls) == 4 * 2
    table = phenotypes.table
    for train, names in calls:
        assert train["block"].nunique() == 1
        block = train["block"].iloc[0]
        in_block = table[table["block"] == block]
        fold = in_block.loc[in_block["name"].isin(names), "cv"].unique()
        assert len(fold) == 1
        expected_train = in_block[in_block["cv"] != fold[0]]
        assert sorted(train["name"]) == sorted(expected_train["name"])
    key = ["name", "block"]
    assert len(predictions) == len(table)
    assert not predictions.duplicated(key).any()
    merged = predictions.merge(table, on=key, suffixes=("", "_table"))
    assert (merged["response"] == merged["response_table"]).all()
    assert (merged["cv"] == merged["cv_table"]).all()
    assert (merged["site"] == merged["site_table"]).all()
    assert list(predictions.columns) == [
        "name", "block", "cv", "response", "method", "prediction", "fixed", "site",
    ]  # fmt: skip


def test_accuracy_table_per_fold_and_pooled(small_data):
    phenotypes, genotypes = small_data
    predictions, accuracy = cross_validate(
        phenotypes, genotypes, ["gblup", "rkhs"], progress=False
    )
    assert list(accuracy.columns) == [
        "method", "block", "fold", "pearson_r", "pearson_r_genetic", "n",
    ]  # fmt: skip
    assert len(accuracy) == 2 * 2 * (4 + 1)
    assert accuracy["fold"].tolist()[:5] == ["0", "1", "2", "3", "all"]
    for row in accuracy.itertuples():
        rows = predictions[
            (predictions["method"] == row.method) & (predictions["block"] == row.block)
        ]
        if row.fold != "all":
            rows = rows[rows["cv"] == row.fold]
        assert row.n == len(rows)
        assert np.isclose(row.pearson_r, pearson(rows["prediction"], rows["response"]))
    pooled = accuracy[accuracy["fold"] == "all"]
    assert pooled.groupby("method")["n"].sum().tolist() == [75, 75]


def test_pooled_table_and_text(small_data):
    phenotypes, genotypes = small_data
    _, accuracy = cross_validate(phenotypes, genotypes, ["gblup"], progress=False)
    table = pooled_table(accuracy)
    assert list(table.columns) == ["block 0", "block 1", "mean"]
    assert np.isclose(table.loc["gblup", "mean"], table.iloc[0, :2].mean())
    text = format_accuracy(accuracy)
    assert text.splitlines()[-1].startswith("gblup")
    assert f"{table.loc['gblup', 'mean']:.3f}" in text


def test_single_split_uses_one_fold(small_data):
    phenotypes, genotypes = small_data
    predictions, accuracy = single_split(phenotypes, genotypes, "gblup", "2")
    assert set(predictions["cv"]) == {"2"}
    assert len(predictions) == (phenotypes.table["cv"] == "2").sum()
    assert set(accuracy["fold"]) == {"2", "all"}
    with pytest.raises(ValueError, match="not a value of the cv column"):
        single_split(phenotypes, genotypes, "gblup", "7")


def test_inputs_are_checked(small_data):
    phenotypes, genotypes = small_data
    with pytest.raises(InputError, match="--methods: unknown method"):
        cross_validate(phenotypes, genotypes, ["nope"], progress=False)
    stranger = phenotypes.table.iloc[:1].assign(name="unknown")
    extended = Phenotypes(pd.concat([phenotypes.table, stranger]))
    with pytest.raises(ValueError, match="no genotypes"):
        cross_validate(extended, genotypes, ["gblup"], progress=False)


def test_plots_are_written_atomically(small_data, tmp_path):
    phenotypes, genotypes = small_data
    predictions, accuracy = cross_validate(
        phenotypes, genotypes, ["gblup", "rkhs"], progress=False
    )
    scatter = plot_observed_vs_predicted(predictions, tmp_path / "scatter.png")
    bars = plot_accuracy(accuracy, tmp_path / "accuracy.png")
    for path in (scatter, bars):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png", "scatter.png"]


@pytest.fixture(scope="module")
def wheat_cross_validation(wheat_paths):
    markers = read_chroms(wheat_paths["chroms"])
    genotypes = read_markers(wheat_paths["markers"], markers)
    phenotypes = read_phenotypes(wheat_paths["phenotypes"])
    # CPU seconds of this process (all threads), not wall time: a loaded box
    # stretches the wall clock, not the work
    start = time.process_time()
    predictions, accuracy = cross_validate(
        phenotypes, genotypes, ["gblup", "rkhs"], progress=False
    )
    return predictions, accuracy, time.process_time() - start


@pytest.mark.slow
def test_wheat_gblup_matches_published_accuracy(wheat_cross_validation):
    _, accuracy, _ = wheat_cross_validation
    r = pooled_table(accuracy).loc["gblup"].iloc[:4].to_numpy()
    assert np.abs(r - WHEAT_GBLUP_REFERENCE).max() <= 0.015, r


@pytest.mark.slow
def test_wheat_rkhs_accuracy(wheat_cross_validation):
    _, accuracy, _ = wheat_cross_validation
    assert pooled_table(accuracy).loc["rkhs", "mean"] >= 0.49


@pytest.mark.slow
def test_wheat_evaluation_is_fast_and_complete(wheat_cross_validation):
    predictions, accuracy, seconds = wheat_cross_validation
    assert seconds < 30
    assert len(predictions) == 2 * 2396
    assert len(accuracy) == 2 * 4 * (10 + 1)


@pytest.mark.slow
def test_wheat_perceiver_pretrained_keeps_the_kernels_accuracy(wheat_paths):
    """perceiver-pretrained on two wheat folds (a one-epoch pretraining, to stay
    fast) predicts at least as well as RKHS, its additive path, less 0.01, and
    clearly above GBLUP (RKHS 0.463, GBLUP 0.403 on these folds): the head on
    the frozen encoder, early-stopped on training records, must not undo the
    kernel."""
    genotypes = read_markers(wheat_paths["markers"], read_chroms(wheat_paths["chroms"]))
    phenotypes = read_phenotypes(wheat_paths["phenotypes"])
    options = {"params": {"progress": False}, "typed": {"epochs": 1}}
    _, accuracy = cross_validate(
        phenotypes,
        genotypes,
        ["gblup", "rkhs", "perceiver-pretrained"],
        progress=False,
        options=options,
        folds=["1", "2"],
    )
    mean = pooled_table(accuracy)["mean"]
    assert mean["perceiver-pretrained"] >= mean["rkhs"] - 0.01, mean
    assert mean["perceiver-pretrained"] >= mean["gblup"] + 0.03, mean
