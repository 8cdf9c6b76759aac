"""Fixed effects of a finetuned Perceiver and of saved baseline models: fitted by
GLS on the training records only (checked against GLS solved with numpy and the
simulated sex effect), kept in the model, and added per record by ``predict
--records`` / ``predict(records=...)`` (checked against sums by hand)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gperceiver as gp
from gperceiver.baselines import GBLUP, RKHS, FixedDesign, FixedEffects, Kernel
from gperceiver.checkpoint import read_json, write_json
from gperceiver.cli import main
from gperceiver.data import Phenotypes
from gperceiver.finetuning import finetune, load_predictor
from gperceiver.io import write_chroms, write_markers, write_phenotypes
from test_fixed_effects import SEX_HERD_AGE, animal_problem

TINY = {"n_latents": 4, "self_layers": 1, "encode_iters": 1, "width": 16}
FIXED = ["--fixed", "sex,herd", "--fixed-numeric", "age"]


@pytest.fixture(scope="module")
def animals():
    """150 animals, one record each (sex effect 2.0), ``cv`` 0..4."""
    _, records, _, genotypes = animal_problem(seed=3, n=150, records_per=1)
    records["cv"] = np.arange(len(records)) % 5
    return records, genotypes


def write_inputs(records, genotypes, directory) -> list[str]:
    directory.mkdir(exist_ok=True)
    write_phenotypes(Phenotypes(records), directory / "phenos.tsv")
    write_chroms(genotypes.markers, directory / "chroms.tsv")
    write_markers(genotypes, directory / "markers.tsv")
    (directory / "tiny.json").write_text(json.dumps(TINY))
    return [str(directory / f) for f in ("phenos.tsv", "chroms.tsv", "markers.tsv")]


def finetune_cli(inputs, out, *extra) -> dict:
    params = str(Path(inputs[0]).parent / "tiny.json")
    argv = ["finetune", *inputs, "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--params", params, "--threads", "1", *extra]) == 0
    return json.loads((out / "config.json").read_text())["fixed_effects"]


def by_hand(block: dict, records: pd.DataFrame) -> np.ndarray:
    """``X beta`` of ``records`` written out from the saved levels: intercept,
    one indicator per non-reference level (the mean of the levels for an unseen
    one), centred covariates."""
    design, beta = (
        block["design"],
        dict(zip(block["design"]["names"], block["beta"], strict=True)),
    )
    out = np.full(len(records), beta["intercept"])
    for column, levels in design["levels"].items():
        for level in levels[1:]:
            seen = records[column].isin(levels).to_numpy()
            indicator = np.where(seen, records[column] == level, 1 / len(levels))
            out += beta[f"{column}={level}"] * indicator
    for column, mean in design["means"].items():
        out += beta[column] * (records[column].to_numpy() - mean)
    return out


def test_finetune_fixed__gls_of_the_training_records_recovers_the_sex_effect(
    animals, tmp_path
):
    records, genotypes = animals
    inputs = write_inputs(records, genotypes, tmp_path / "in")
    saved = finetune_cli(inputs, tmp_path / "ft", *FIXED, "--cv", "0")["blocks"][0]
    written = pd.read_csv(inputs[0], sep="\t")  # the values finetune reads
    train = written[written["cv"] != 0]
    # GLS with numpy at the REML variances of the training records
    kernel = Kernel.relationship(genotypes)
    fit = GBLUP(kernel, fixed=SEX_HERD_AGE).fit(train, None)
    rows = kernel.index_of(train["name"])
    v = fit.fit_.s2g * kernel.matrix[np.ix_(rows, rows)] + fit.fit_.s2e * np.eye(
        len(rows)
    )
    x = np.column_stack(
        [
            np.ones(len(train)),
            train["sex"] == "M",
            train["herd"] == "h2",
            train["herd"] == "h3",
            train["age"] - train["age"].mean(),
        ]
    ).astype(float)
    vx = np.linalg.solve(v, x)
    covariance = np.linalg.inv(x.T @ vx)
    beta = covariance @ (vx.T @ train["response"].to_numpy())
    assert saved["design"]["names"] == ["intercept", "sex=M", "herd=h2", "herd=h3",
                                        "age"]  # fmt: skip
    assert np.allclose(saved["beta"], beta, rtol=1e-6, atol=1e-8)
    se = np.sqrt(covariance[1, 1])
    assert abs(saved["beta"][1] - 2.0) < 2 * se, (saved["beta"][1], se)


def test_finetune_fixed__validation_records_never_change_the_fixed_effects(
    animals, tmp_path, capsys
):
    records, genotypes = animals
    first = finetune_cli(
        write_inputs(records, genotypes, tmp_path / "a"), tmp_path / "a" / "ft",
        *FIXED, "--cv", "0",
    )  # fmt: skip
    changed = records.copy()
    rng = np.random.default_rng(9)
    is_0 = (changed["cv"] == 0).to_numpy()
    changed.loc[is_0, "response"] = rng.normal(50, 10, size=is_0.sum())
    changed.loc[is_0, "sex"] = np.where(changed.loc[is_0, "sex"] == "M", "F", "M")
    changed.loc[is_0, "age"] = rng.uniform(10, 20, size=is_0.sum())
    changed.loc[is_0, "herd"] = "h9"  # a level only validation records have
    capsys.readouterr()
    again = finetune_cli(
        write_inputs(changed, genotypes, tmp_path / "b"), tmp_path / "b" / "ft",
        *FIXED, "--cv", "0",
    )  # fmt: skip
    assert "'herd': 30 record(s)" in capsys.readouterr().err
    assert again == first


def test_predict_records__adds_the_fixed_part_of_each_record(animals, tmp_path, capsys):
    records, genotypes = animals
    inputs = write_inputs(records, genotypes, tmp_path)
    saved = finetune_cli(inputs, tmp_path / "ft", *FIXED)["blocks"][0]
    genotype_files = inputs[1:]
    plain = tmp_path / "plain.tsv"
    model = ["--model", str(tmp_path / "ft")]
    assert main(["predict", *genotype_files, *model, "--out", str(plain)]) == 0
    assert "fixed part at the mean" in capsys.readouterr().out
    gebv = pd.read_csv(plain, sep="\t").set_index("name")["gebv"]
    sheet = records.drop(columns=["response", "cv"]).iloc[:12].copy()
    sheet.loc[sheet.index[:3], "herd"] = "h7"  # unseen in training
    sheet.to_csv(tmp_path / "records.tsv", sep="\t", index=False)
    out = tmp_path / "records_out.tsv"
    argv = ["predict", *genotype_files, *model, "--out", str(out)]
    assert main([*argv, "--records", str(tmp_path / "records.tsv")]) == 0
    err = capsys.readouterr().err
    assert "'herd': 3 record(s)" in err and len(err.strip().splitlines()) == 1
    written = pd.read_csv(out, sep="\t")
    assert written["name"].tolist() == sheet["name"].tolist()
    fixed = by_hand(saved, sheet)
    assert np.allclose(written["fixed"], fixed, atol=1e-4)
    expected = gebv.loc[sheet["name"]].to_numpy() + fixed
    assert np.allclose(written["prediction"], expected, atol=1e-4)


def test_perceiver_fixed__save_load_predicts_records_bit_identically(animals, tmp_path):
    records, genotypes = animals
    model = gp.Perceiver(
        epochs=1, params={**TINY, "val_fraction": 0}, fixed="sex,herd",
        fixed_numeric=["age"],
    ).fit(genotypes, records)  # fmt: skip
    assert model.get_params()["fixed"] == "sex,herd"
    effects = model.fixed_effects_.set_index("effect")["value"]
    assert abs(effects["sex=M"] - 2.0) < 0.6
    sheet = records.drop(columns=["response", "cv"]).iloc[:20]
    predicted = model.predict(genotypes, sheet)
    model.save_pretrained(tmp_path / "saved")
    again = gp.Perceiver.from_pretrained(tmp_path / "saved")
    assert np.array_equal(again.predict(genotypes, sheet), predicted)
    assert np.array_equal(again.predict(genotypes), model.predict(genotypes))
    # a record: the genetic value plus its own fixed part; no record: plus the
    # fixed part at the mean of the training levels and covariates
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    block = saved["fixed_effects"]["blocks"][0]
    beta = dict(zip(block["design"]["names"], block["beta"], strict=True))
    at_mean = beta["intercept"] + beta["sex=M"] / 2
    at_mean += (beta["herd=h2"] + beta["herd=h3"]) / 3
    genetic = predicted - by_hand(block, sheet)
    without = model.predict(genotypes)[genotypes.index_of(sheet["name"])]
    assert np.allclose(without, genetic + at_mean, atol=1e-9)


def test_finetune_fixed__refuses_an_unknown_column_in_one_line(
    animals, tmp_path, capsys
):
    records, genotypes = animals
    inputs = write_inputs(records, genotypes, tmp_path)
    out = tmp_path / "ft"
    argv = ["finetune", *inputs, "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--fixed", "litter"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--fixed" in err and "'litter'" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("method", ["gblup", "rkhs"])
def test_fit_predict_records__equals_the_fit_on_its_own_records(
    animals, tmp_path, method
):
    records, genotypes = animals
    inputs = write_inputs(records, genotypes, tmp_path)
    model_dir = str(tmp_path / "model")
    assert main(["fit", *inputs, "--method", method, "--out", model_dir, *FIXED]) == 0
    sheet = records.drop(columns=["response"]).iloc[::7]
    sheet.to_csv(tmp_path / "records.tsv", sep="\t", index=False)
    out = tmp_path / "out.tsv"
    argv = ["predict", *inputs[1:], "--model", model_dir, "--out", str(out)]
    assert main([*argv, "--records", str(tmp_path / "records.tsv")]) == 0
    written = pd.read_csv(out, sep="\t")
    estimator = gp.GBLUP if method == "gblup" else gp.RKHS
    spec = FixedEffects(("sex", "herd"), ("age",))
    kernel = Kernel.relationship(genotypes)
    reference = (GBLUP if method == "gblup" else RKHS)(kernel, fixed=spec)
    fixed, genetic = reference.fit(records, None).predict_parts(sheet)
    assert np.allclose(written["fixed"], fixed, atol=1e-4)
    assert np.allclose(written["prediction"], fixed + genetic, atol=1e-4)
    api = estimator.from_pretrained(model_dir).predict(genotypes, sheet)
    assert np.allclose(api, written["prediction"], atol=1e-4)  # TSV rounding


def test_fixed_design__json_round_trip_keeps_the_columns_in_order(tmp_path, animals):
    """Factors named out of alphabetical order (sex before herd): the JSON file
    sorts its keys, the loaded design must still match its coefficients."""
    records, _ = animals
    design = FixedDesign(FixedEffects(("sex", "herd"), ("age",))).fit(records)
    write_json(design.to_dict(), tmp_path / "design.json")
    again = FixedDesign.from_dict(read_json(tmp_path / "design.json"))
    assert again.names_ == design.names_
    assert np.array_equal(again.matrix(records), design.matrix(records))


def test_evaluate_perceiver_fixed__fold_fixed_part_is_finetune_cv_models(
    animals, tmp_path
):
    """``evaluate``'s Perceiver and ``finetune --cv 0`` fit the fixed effects the
    same way: the fold-0 fixed part of the one is what the other's saved model
    adds to the fold-0 records, both that of a GBLUP fitted on folds 1-4."""
    records, genotypes = animals
    params = {**TINY, "epochs": 1}
    fixed = {"fixed": "sex,herd", "fixed_numeric": "age"}
    _, predictions = gp.cross_validate(
        genotypes, records, ["perceiver"], folds=[0], params=params,
        predictions=True, **fixed,
    )  # fmt: skip
    fold_0 = records[records["cv"] == 0]
    kernel = Kernel.relationship(genotypes)
    reference = GBLUP(kernel, fixed=SEX_HERD_AGE).fit(records[records["cv"] != 0], None)
    expected = reference.predict_parts(fold_0)[0]
    evaluated = predictions.set_index("name").loc[fold_0["name"], "fixed"]
    assert np.allclose(evaluated.to_numpy(), expected, rtol=1e-12, atol=1e-12)
    typed = {**fixed, "progress": False}
    finetune(Phenotypes(records), genotypes, tmp_path / "ft", params, typed, cv=0)
    saved = load_predictor(tmp_path / "ft").fixed
    assert np.allclose(saved.values(fold_0), expected, rtol=1e-12, atol=1e-12)
