"""The Python API (``import gperceiver as gp``): the estimators predict what the
commands predict, follow scikit-learn's parameter protocol, save and load
exactly, and the README's session runs as printed."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gperceiver as gp
from gperceiver.cli import main
from gperceiver.data import Phenotypes
from gperceiver.io import (
    InputError,
    read_dosages,
    write_chroms,
    write_markers,
    write_phenotypes,
)
from gperceiver.simulate import SimulationConfig, simulate

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def animals():
    config = SimulationConfig(
        n_individuals=90, n_markers=200, chromosome_length_bp=30_000_000,
        n_qtl=20, n_environments=2, n_folds=3, fixed_variance=0.3, seed=7,
    )  # fmt: skip
    return simulate(config)


def write_inputs(data, directory) -> list[str]:
    write_phenotypes(data.phenotypes, directory / "phenos.tsv")
    write_chroms(data.genotypes.markers, directory / "chroms.tsv")
    write_markers(data.genotypes, directory / "markers.tsv")
    return [str(directory / f) for f in ("phenos.tsv", "chroms.tsv", "markers.tsv")]


@pytest.mark.parametrize("method", ["gblup", "rkhs"])
def test_estimators__predict_what_evaluate_predicts_on_the_same_folds(
    animals, tmp_path, method
):
    out = tmp_path / "cv"
    argv = ["evaluate", *write_inputs(animals, tmp_path), "--methods", method]
    assert main([*argv, "--fixed", "sex", "--quiet", "--out", str(out)]) == 0
    cli = pd.read_csv(out / "predictions.tsv", sep="\t")
    cli_accuracy = pd.read_csv(out / "accuracy.tsv", sep="\t")
    g = gp.read_genotypes(tmp_path / "markers.tsv", chroms=tmp_path / "chroms.tsv")
    phenotypes = gp.read_phenotypes(tmp_path / "phenos.tsv", g)
    accuracy = gp.cross_validate(g, phenotypes, [method], fixed="sex")
    both = accuracy.astype({"fold": str}).merge(
        cli_accuracy.astype({"fold": str}), on=["method", "block", "fold"]
    )
    assert len(both) == len(accuracy) == len(cli_accuracy) == 2 * 4  # (3 folds + all)
    assert np.allclose(both["pearson_r_x"], both["pearson_r_y"], atol=1e-4)  # 4 digits
    estimator = {"gblup": gp.GBLUP, "rkhs": gp.RKHS}[method](fixed=["sex"])
    table = phenotypes.table
    for fold in ("0", "1", "2"):
        is_fold = table["cv"].astype(str) == fold
        estimator.fit(g, table[~is_fold])
        fold_rows = cli[cli["cv"].astype(str) == fold]
        assert len(fold_rows) == is_fold.sum() > 0
        fixed, genetic = estimator.model_.predict_records(g, table[is_fold])
        assert np.allclose(fixed + genetic, fold_rows["prediction"], atol=1e-5)
        # a new individual: the fixed part at the mean level plus the same BLUP
        values = estimator.predict(g)  # (N, 2 environments)
        rows = g.index_of(fold_rows["name"])
        blup = values[rows, fold_rows["block"].to_numpy()]
        mean_fixed = [env.fixed_part for env in estimator.model_.environments]
        expected = fold_rows["prediction"] - fold_rows["fixed"]
        offset = np.array(mean_fixed)[fold_rows["block"].to_numpy()]
        assert np.allclose(blup - offset, expected, atol=1e-5)


def test_gblup__responses_as_an_array_fit_as_a_table(animals):
    g, table = animals.genotypes, animals.phenotypes.table
    block = table[table["block"] == 0]
    y = np.full(g.n_individuals, np.nan)
    y[g.index_of(block["name"])] = block["response"]
    from_table = gp.GBLUP().fit(g, block[["name", "response"]]).predict(g)
    from_array = gp.GBLUP().fit(g, y).predict(g)
    assert from_array.shape == (g.n_individuals,)
    assert np.array_equal(from_table, from_array)
    with pytest.raises(ValueError, match="one response per individual"):
        gp.GBLUP().fit(g, y[:-1])


def test_estimators__get_params_set_params_and_clone(animals):
    g, table = animals.genotypes, animals.phenotypes.table
    for estimator in (
        gp.GBLUP(fixed="sex", fixed_numeric=["age"]),
        gp.RKHS(bandwidths=(0.5, 1.0)),
        gp.Perceiver(width=16, epochs=1, params={"additive": False}),
    ):
        params = estimator.get_params()
        clone = type(estimator)(**params)
        assert clone.get_params() == params and clone is not estimator
        assert repr(clone) == repr(estimator)
        assert not [k for k in vars(clone) if k.endswith("_")]  # nothing fitted
        first = next(iter(params))
        assert estimator.set_params(**{first: params[first]}) is estimator
        with pytest.raises(ValueError, match="no parameter"):
            estimator.set_params(not_a_parameter=1)
    model = gp.RKHS(bandwidths=(1.0,)).set_params(fixed="sex").fit(g, table)
    assert model.fixed == "sex" and list(model.heritability_.index) == [0, 1]
    effects = model.fixed_effects_
    assert set(effects["effect"]) == {"intercept", "sex=M"}
    bandwidths = model.variance_components_.query("component == 'bandwidth'")
    assert set(bandwidths["value"]) == {1.0}


def test_gblup__save_pretrained_from_pretrained_is_gperceiver_fit(animals, tmp_path):
    g = animals.genotypes
    phenotypes = Phenotypes(
        animals.phenotypes.table, environment_labels=["north", "south"]
    )
    model = gp.GBLUP(fixed="sex").fit(g, phenotypes)
    model.save_pretrained(tmp_path / "model")
    again = gp.GBLUP.from_pretrained(tmp_path / "model")
    assert np.array_equal(again.predict(g), model.predict(g))
    assert again.get_params() == {"fixed": ["sex"], "fixed_numeric": []}
    assert again.environments_ == ["north", "south"]
    assert again.heritability_.equals(model.heritability_)
    out = tmp_path / "p.tsv"
    inputs = write_inputs(animals, tmp_path)[1:]
    assert main(["predict", *inputs, "--model", str(tmp_path / "model"),
                 "--out", str(out)]) == 0  # fmt: skip
    written = pd.read_csv(out, sep="\t")
    assert np.allclose(written["prediction"], model.predict(g).ravel(), atol=1e-5)
    with pytest.raises(InputError, match="holds a gblup model"):
        gp.RKHS.from_pretrained(tmp_path / "model")


def test_perceiver__fit_predict_and_a_saved_model_predicts_identically(tmp_path):
    config = SimulationConfig(
        n_individuals=40, n_markers=60, n_qtl=6, n_environments=1, seed=2
    )
    data = simulate(config)
    tiny = {"n_latents": 4, "self_layers": 1, "encode_iters": 1, "val_fraction": 0}
    model = gp.Perceiver(width=16, epochs=1, params=tiny).fit(
        data.genotypes, data.phenotypes
    )
    predictions = model.predict(data.genotypes)
    assert predictions.shape == (40,) and np.isfinite(predictions).all()
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "config.json").exists()
    again = gp.Perceiver.from_pretrained(tmp_path / "saved")
    assert np.array_equal(again.predict(data.genotypes), predictions)
    out = tmp_path / "p.tsv"
    write_chroms(data.genotypes.markers, tmp_path / "chroms.tsv")
    write_markers(data.genotypes, tmp_path / "markers.tsv")
    argv = ["predict", str(tmp_path / "chroms.tsv"), str(tmp_path / "markers.tsv")]
    assert main([*argv, "--model", str(tmp_path / "saved"), "--out", str(out)]) == 0
    written = pd.read_csv(out, sep="\t")
    assert np.allclose(written["prediction"], predictions, atol=1e-5)


def test_from_dosages__reads_as_the_dosage_table_reader(wheat_paths):
    reference = read_dosages(
        wheat_paths["dosages"], gp.read_genotypes(
            wheat_paths["markers"], chroms=wheat_paths["chroms"]).markers, ploidy=1,
    )  # fmt: skip
    table = pd.read_csv(wheat_paths["dosages"], sep="\t", index_col=0)
    chroms = pd.read_csv(wheat_paths["chroms"], sep="\t").set_index("marker")
    values = table.to_numpy(np.float64)
    values[3, 5] = np.nan  # a missing call
    g = gp.Genotypes.from_dosages(
        values, table.index, table.columns, ploidy=1,
        chrom=chroms.loc[table.columns, "chr"], pos=chroms.loc[table.columns, "pos"],
    )  # fmt: skip
    assert np.array_equal(g.markers.names, reference.markers.names)
    expected = reference.alleles.copy()
    expected[3, list(reference.markers.names).index(table.columns[5])] = 0
    assert np.array_equal(g.alleles, expected)
    with pytest.raises(ValueError, match="whole numbers"):
        gp.Genotypes.from_dosages([[0.5]], ["a"])


def test_import_gperceiver__loads_neither_numpy_nor_torch():
    code = (
        "import sys, gperceiver as gp; a = 'numpy' in sys.modules; gp.GBLUP; "
        "print(a, 'numpy' in sys.modules, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(gp.__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    assert result.stdout.split() == ["False", "True", "False"], result.stderr


@pytest.mark.parametrize(
    "first, preset, want",
    [("gperceiver", None, "20000"), ("gperceiver", "7", "7"), ("torch", None, "None")],
)
def test_import_gperceiver__shortens_openmp_spinning_before_torch_loads(
    first, preset, want
):
    """Imported before torch, gperceiver sets GOMP_SPINCOUNT (torch's OpenMP
    workers then stop spinning sooner); a value already set wins, and after
    torch has loaded (too late for its OpenMP) nothing is set."""
    code = (
        f"import {first}, os, gperceiver, torch; "
        "print(os.environ.get('GOMP_SPINCOUNT'))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(gp.__file__).parents[1])}
    env.pop("GOMP_SPINCOUNT", None)
    if preset is not None:
        env["GOMP_SPINCOUNT"] = preset
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    assert result.stdout.split() == [want], result.stderr


def readme_python_block() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_readme__python_api_session_runs_as_printed(tmp_path, monkeypatch):
    code = readme_python_block()
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    assert (tmp_path / "wheat-gblup" / "config.json").exists()
