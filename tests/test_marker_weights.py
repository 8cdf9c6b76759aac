"""Prior marker weights in the additive path (weighted GBLUP / RKHS): reading,
REML's choice of how much they count, saving, and format-1 models."""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from gperceiver.checkpoint import load_tensors, read_json, write_json
from gperceiver.cli import main
from gperceiver.data import Phenotypes
from gperceiver.evaluate import POOLED, cross_validate, pearson
from gperceiver.finetuning import finetune, load_predictor
from gperceiver.io import (
    InputError,
    read_marker_inputs,
    read_marker_weights,
    write_chroms,
    write_markers,
    write_phenotypes,
    write_table,
)
from gperceiver.simulate import SimulationConfig, simulate

SMALL = {
    "width": 16,
    "n_latents": 8,
    "self_layers": 1,
    "encode_iters": 1,
    "progress": False,
    "epochs": 1,
    "val_fraction": 0,
}


@pytest.fixture(scope="module")
def sparse():
    """Few large QTL among many markers: a prior naming them should help."""
    config = SimulationConfig(
        n_individuals=200,
        n_markers=600,
        n_chromosomes=2,
        n_qtl=6,
        heritability=0.8,
        dominance_variance=0.0,
        epistasis_variance=0.0,
        gxe_correlation=0.9,
        n_environments=2,
        n_folds=4,
        missing_rate=0.0,
        seed=4,
    )
    return simulate(config)


def write_weights(path, markers, values) -> str:
    write_table(pd.DataFrame({"marker": markers.names, "weight": values}), path)
    return str(path)


def qtl_indicator(data) -> np.ndarray:
    """``(M,)`` 1.0 at the simulated QTL, else 0."""
    indicator = np.zeros(data.genotypes.n_markers)
    indicator[data.qtl] = 1.0
    return indicator


def cli_inputs(data, directory) -> list[str]:
    """Write the phenotypes, chroms and markers tables; their paths, in CLI order."""
    g = data.genotypes
    write_phenotypes(data.phenotypes, directory / "phenos.tsv")
    write_chroms(g.markers, directory / "chroms.tsv")
    write_markers(g, directory / "markers.tsv")
    return [str(directory / f) for f in ("phenos.tsv", "chroms.tsv", "markers.tsv")]


def additive_accuracy(directory, genotypes, table) -> float:
    """Mean over blocks of Pearson r between the saved additive path's outputs and
    the held-out (cv 0) responses."""
    model = load_predictor(directory, genotypes).members[0].eval()
    held = table[table["cv"].astype(int) == 0]
    rows = genotypes.index_of(held["name"])
    alleles = torch.from_numpy(genotypes.alleles[rows].astype(np.int64))
    with torch.no_grad():
        path = model.additive(alleles, torch.arange(genotypes.n_markers)).numpy()
    blocks = held["block"].to_numpy()
    response = held["response"].to_numpy()
    return float(
        np.mean([pearson(path[blocks == b, b], response[blocks == b]) for b in (0, 1)])
    )


@pytest.mark.parametrize("kernel", ["linear", "gaussian"])
def test_marker_weights__reml_follows_a_true_prior_and_drops_a_shuffled_one(
    tmp_path, sparse, kernel
):
    g, table = sparse.genotypes, sparse.phenotypes.table
    train = Phenotypes(table[table["cv"].astype(int) != 0], "train")
    indicator = qtl_indicator(sparse)
    priors = {
        "none": None,
        "qtl": indicator,
        "shuffled": np.random.default_rng(0).permutation(indicator),
    }
    mix, accuracy = {}, {}
    for name, values in priors.items():
        params = {**SMALL, "additive_kernel": kernel}
        if values is not None:
            path = tmp_path / f"{name}.tsv"
            params["marker_weights"] = write_weights(path, g.markers, values)
        inputs = read_marker_inputs(params, g.markers)
        finetune(train, g, tmp_path / name, params, marker_inputs=inputs)
        config = read_json(tmp_path / name / "config.json")
        assert config["head"]["additive_kernel"] == kernel
        mix[name] = config["members"][0]["marker_weight_mix"]
        accuracy[name] = additive_accuracy(tmp_path / name, g, table)
    assert mix["none"] is None
    assert mix["qtl"] >= 0.75 and mix["shuffled"] <= 0.25
    assert accuracy["qtl"] > accuracy["none"] + 0.05
    assert accuracy["shuffled"] > accuracy["none"] - 0.03


def test_read_marker_weights__missing_get_the_mean_weight(sparse, tmp_path):
    markers = sparse.genotypes.markers
    path = tmp_path / "w.tsv"
    path.write_text(f"marker\tw\n{markers.names[0]}\t3\n{markers.names[1]}\t1\n")
    weights = read_marker_weights(path, markers)
    assert weights[:2].tolist() == [3.0, 1.0] and np.allclose(weights[2:], 2.0)


@pytest.mark.parametrize(
    "header, rows, where, problem",
    [
        ("marker\tw", "{0}\t-1\n{1}\t2\n", "marker '{0}'", "negative"),
        ("marker\tw", "{0}\t0\n{1}\t0\n", "column 'w'", "every weight is 0"),
        ("marker\tw\tv", "{0}\t1\t2\n", "line 1", "one numeric column"),
        ("marker\tw", "{0}\tgene\n", "line 1", "one numeric column"),
    ],
)
def test_read_marker_weights__raises_on_bad_table(
    sparse, tmp_path, header, rows, where, problem
):
    markers = sparse.genotypes.markers
    path = tmp_path / "w.tsv"
    path.write_text(header + "\n" + rows.format(*markers.names[:2]))
    with pytest.raises(InputError, match=problem) as err:
        read_marker_weights(path, markers)
    assert err.value.where == where.format(*markers.names[:2])


def test_cli_finetune__marker_weights_without_additive_path_exit_1(
    sparse, tmp_path, capsys
):
    g = sparse.genotypes
    args = cli_inputs(sparse, tmp_path)
    weights = write_weights(tmp_path / "w.tsv", g.markers, np.ones(g.n_markers))
    out = tmp_path / "model"
    code = main(
        ["finetune", *args, "--out", str(out), "--objective", "ranking"]
        + ["--marker-weights", weights, "--no-progress"]
    )
    assert code == 1
    assert "marker_weights" in capsys.readouterr().err
    assert not out.exists()


def test_format_1_gaussian_model__loads_and_predicts_the_same(sparse, tmp_path):
    """Format 1 stored one ``denominator`` where format 2 stores a per-column
    scale; an unweighted format-1 model still loads, with the same predictions."""
    g, table = sparse.genotypes, sparse.phenotypes.table
    directory = tmp_path / "m"
    finetune(Phenotypes(table, "all"), g, directory, {**SMALL, "seed": 1})
    expected = load_predictor(directory, g).predict(g)
    weights = directory / "member-0" / "model.safetensors"
    state = load_tensors(weights)
    scale = state.pop("additive.column_scale")
    assert torch.allclose(scale, scale[0])  # unweighted: one scale for all
    state["additive.denominator"] = scale[0] ** -2
    save_file(state, str(weights))
    for config in (directory / "config.json", directory / "member-0" / "config.json"):
        write_json({**read_json(config), "format_version": 1}, config)
    assert np.allclose(load_predictor(directory, g).predict(g), expected, atol=1e-5)


def test_gblup_weighted__beats_gblup_with_a_true_prior_and_equals_it_uniform(
    sparse, tmp_path
):
    g, phenotypes = sparse.genotypes, sparse.phenotypes
    indicator = qtl_indicator(sparse)
    accuracy = {}
    for name, values in (("qtl", indicator), ("uniform", np.ones(g.n_markers))):
        path = write_weights(tmp_path / f"{name}.tsv", g.markers, values)
        inputs = read_marker_inputs({"marker_weights": path}, g.markers)
        options = {"marker_inputs": inputs}
        predictions, table = cross_validate(
            phenotypes, g, ["gblup", "gblup-weighted"], False, options
        )
        pooled = table[table["fold"] == POOLED].groupby("method")["pearson_r"].mean()
        accuracy[name] = pooled
        if name == "uniform":
            by = predictions.pivot_table("prediction", ["name", "block"], "method")
            assert np.allclose(by["gblup"], by["gblup-weighted"])
    assert accuracy["qtl"]["gblup-weighted"] > accuracy["qtl"]["gblup"] + 0.1


def test_gblup_weighted__without_a_prior_is_an_input_error(sparse):
    with pytest.raises(InputError, match="needs a prior"):
        cross_validate(sparse.phenotypes, sparse.genotypes, ["gblup-weighted"], False)


def test_cli_gblup__weighted_needs_its_prior_and_writes_predictions(
    sparse, tmp_path, capsys
):
    g = sparse.genotypes
    args = cli_inputs(sparse, tmp_path)
    indicator = qtl_indicator(sparse)
    weights = write_weights(tmp_path / "w.tsv", g.markers, indicator)
    out = tmp_path / "pred.tsv"
    base = ["gblup", *args, "--cv", "0", "--predictions", str(out)]
    assert main([*base, "--method", "gblup-weighted"]) == 1
    assert "needs a prior" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--marker-weights", weights]) == 1  # method gblup
    assert "does not use marker weights" in capsys.readouterr().err
    assert main([*base, "--method", "gblup-weighted", "--marker-weights", weights]) == 0
    predictions = pd.read_csv(out, sep="\t")
    assert (predictions["method"] == "gblup-weighted").all()
    assert len(predictions) == (sparse.phenotypes.table["cv"].astype(str) == "0").sum()


def test_cli_evaluate__weights_without_a_method_that_uses_them_exit_1(
    sparse, tmp_path, capsys
):
    g = sparse.genotypes
    args = cli_inputs(sparse, tmp_path)
    weights = write_weights(tmp_path / "w.tsv", g.markers, np.ones(g.n_markers))
    out = tmp_path / "eval"
    code = main(
        ["evaluate", *args, "--out", str(out), "--methods", "gblup,rkhs"]
        + ["--marker-weights", weights, "--quiet"]
    )
    assert code == 1 and "uses marker weights" in capsys.readouterr().err
    assert not out.exists()
