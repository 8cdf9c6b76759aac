"""Phenotype heads, objectives, finetuning, prediction and the evaluate methods."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from gperceiver.baselines import kernel_effects
from gperceiver.cli import main, seed_finetune
from gperceiver.data import Phenotypes
from gperceiver.evaluate import cross_validate, pearson
from gperceiver.finetuning import (
    encoder_features,
    finetune,
    load_predictor,
    prediction_table,
)
from gperceiver.finetuning.training import frozen_features
from gperceiver.io import (
    InputError,
    InputWarning,
    write_chroms,
    write_markers,
    write_phenotypes,
)
from gperceiver.nn.heads import HeadConfig, PhenotypeModel
from gperceiver.nn.perceiver import PerceiverConfig
from gperceiver.pretraining import data_sizes, pretrain_encoder
from gperceiver.simulate import SimulationConfig, simulate
from gperceiver.tasks.phenotype import (
    Records,
    objective_loss,
    ordinal_log_probs,
    ranking_loss,
)

SMALL = {
    "width": 16,
    "n_latents": 8,
    "self_layers": 1,
    "encode_iters": 1,
    "progress": False,
}


@pytest.fixture(scope="module")
def sim():
    config = SimulationConfig(
        n_individuals=160,
        n_markers=300,
        n_chromosomes=2,
        n_qtl=20,
        heritability=0.9,
        dominance_variance=0.0,
        epistasis_variance=0.0,
        gxe_correlation=0.9,
        n_environments=2,
        n_folds=4,
        missing_rate=0.0,
        seed=2,
    )
    return simulate(config)


def model_for(genotypes, head, n_blocks=3, additive=False):
    """A small model; without the additive path, so that the network is tested."""
    torch.manual_seed(0)
    config = PerceiverConfig(
        **data_sizes(genotypes), width=16, n_latents=8, dropout=0.0
    )
    markers = genotypes.markers
    head_config = HeadConfig(n_blocks, head=head, additive=additive)
    return PhenotypeModel(config, head_config, markers.relative_pos(), markers.chrom)


@pytest.mark.parametrize("head", ["latent", "pool"])
def test_phenotype_model__rows_never_mix(sim, head):
    g = sim.genotypes
    model = model_for(g, head)
    x = torch.from_numpy(g.alleles[:12].astype(np.int64))
    idx = torch.arange(g.n_markers)
    model.train()
    model(x, idx).sum().backward()  # one training step's worth of batch statistics
    model.calibrate(model.features(x, idx).detach())
    model.eval()
    with torch.no_grad():
        batch = model(x, idx)
        assert batch.shape == (12, 3, 1)
        singles = torch.cat([model(x[i : i + 1], idx) for i in range(12)])
        permuted = model(x.flip(0), idx)
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(permuted, batch.flip(0), atol=1e-5, rtol=1e-4)
    # blocks differ and rows differ: outputs really are per row and per block
    assert (batch[:, 0] - batch[:, 1]).abs().max() > 0
    assert batch[:, 0].std() > 0


def test_additive_path__starts_as_gblup_marker_effects():
    """A fresh model with its additive path set predicts exactly the GBLUP marker
    model (tetraploid, 3 alleles, missing copies), row by row, per block."""
    data = simulate(
        SimulationConfig(
            n_individuals=60,
            n_markers=80,
            ploidy=4,
            n_alleles=3,
            n_qtl=20,
            missing_rate=0.1,
            n_environments=2,
            seed=5,
        )
    )
    g = data.genotypes
    model = model_for(g, "pool", n_blocks=2, additive=True).eval()
    rng = np.random.default_rng(0)
    frequencies = g.allele_frequencies()
    expected = []
    for block in range(2):
        effects = rng.normal(size=(g.n_markers, g.n_alleles))
        model.additive.set_environment(
            block, 0.5 * block, effects, frequencies, g.ploidy
        )
        z = g.dosages(frequencies) - g.ploidy * frequencies
        expected.append(0.5 * block + np.einsum("nma,ma->n", z, effects))
    with torch.no_grad():
        out = model(
            torch.from_numpy(g.alleles.astype(np.int64)), torch.arange(g.n_markers)
        )
    assert np.allclose(out[..., 0].numpy(), np.stack(expected, 1), atol=1e-3)


def test_gaussian_additive_path__predicts_as_the_rkhs_kernel_fit(tmp_path):
    """With ``additive_kernel: gaussian`` the saved model's additive path predicts
    new individuals exactly as an RKHS fit on the same records (tetraploid, 3
    alleles, missing copies), and the whole model starts there."""
    data = simulate(
        SimulationConfig(
            n_individuals=80, n_markers=60, ploidy=4, n_alleles=3, n_qtl=10,
            missing_rate=0.1, n_environments=2, epistasis_variance=0.5, n_folds=4,
            seed=5,
        )
    )  # fmt: skip
    g, table = data.genotypes, data.phenotypes.table
    train = table[table["cv"].astype(int) != 0]
    params = {**SMALL, "additive_kernel": "gaussian", "epochs": 1, "val_fraction": 0}
    finetune(Phenotypes(train, "train"), g, tmp_path / "m", params)
    model = load_predictor(tmp_path / "m", g).members[0].eval()
    held = g.index_of(table.loc[table["cv"].astype(int) == 0, "name"].unique())
    alleles = torch.from_numpy(g.alleles[held].astype(np.int64))
    with torch.no_grad():
        path = model.additive(alleles, torch.arange(g.n_markers)).numpy()
    rows = g.index_of(train["name"].unique())
    frequencies = g.allele_frequencies(rows)
    for block in (0, 1):
        part = train[train["block"] == block]
        y = part["response"].to_numpy()
        y = (y - y.mean()) / y.std()
        fit = kernel_effects(
            g.subset(individuals=g.index_of(part["name"])), y, frequencies
        )
        expected = fit.predict(g.subset(individuals=held))
        assert np.allclose(path[:, block], expected, atol=1e-4)


def test_ranking_loss__compares_within_block_only():
    score = torch.tensor([[0.0, 5.0], [1.0, -5.0]])  # (B=2, E=2)
    y = torch.tensor([[1.0, float("nan")], [0.0, 3.0]])
    seen = ~y.isnan()
    # block 0 is the only block with a pair: individual 0 > 1, score diff -1
    expected = torch.nn.functional.softplus(torch.tensor(1.0))
    torch.testing.assert_close(ranking_loss(score, y, seen), expected)


def test_ordinal_log_probs__normalised_and_ordered():
    thresholds = torch.tensor([[-1.0, 0.0, 2.0]])  # (E=1, C-1=3)
    score = torch.linspace(-3, 3, 7)[:, None]  # (B, E)
    probs = ordinal_log_probs(score, thresholds).exp()  # (B, E, C)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7, 1))
    expected = (probs * torch.arange(4)).sum(-1)[:, 0]
    assert (expected.diff() > 0).all()  # higher score, higher expected class


def test_records__average_replicates_and_mark_missing(sim):
    table = pd.DataFrame(
        {
            "name": [sim.genotypes.names[0]] * 3 + [sim.genotypes.names[1]],
            "response": [1.0, 3.0, 5.0, 7.0],
            "block": [0, 0, 1, 1],
        }
    )
    records = Records.from_table(table, sim.genotypes, 2)
    assert records.rows.tolist() == [0, 1]
    assert records.response[0].tolist() == [2.0, 5.0]
    assert np.isnan(records.response[1, 0]) and records.weight.tolist() == [
        [2, 1],
        [0, 1],
    ]


def test_objective_loss__ignores_absent_records():
    out = torch.zeros(2, 2, 1)
    y = torch.tensor([[1.0, float("nan")], [1.0, 1.0]])
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert objective_loss("mse", out, y, w, None).item() == pytest.approx(1.0)


def responses_for(objective, genetic):
    if objective in ("mse", "huber", "ranking"):
        return genetic
    if objective == "binary":
        return (genetic > np.median(genetic)).astype(float)
    return np.digitize(genetic, np.quantile(genetic, [0.25, 0.5, 0.75])).astype(float)


@pytest.mark.parametrize(
    "objective", ["mse", "huber", "binary", "multiclass", "ordinal", "ranking"]
)
def test_finetune__each_objective_learns_simulated_signal(sim, objective, tmp_path):
    truth = sim.truth[sim.truth["block"] == 0]
    table = pd.DataFrame(
        {
            "name": truth["name"],
            "block": 0,
            "response": responses_for(objective, truth["genetic"].to_numpy()),
        }
    )
    phenotypes = Phenotypes(table, "sim")
    params = {**SMALL, "objective": objective, "epochs": 25, "patience": 25, "lr": 3e-3}
    finetune(phenotypes, sim.genotypes, tmp_path / "m", params)
    predicted = prediction_table(load_predictor(tmp_path / "m"), sim.genotypes)
    merged = predicted.merge(table, on=["name", "block"])
    r = pearson(
        merged["prediction"], truth.set_index("name").loc[merged["name"], "genetic"]
    )
    assert r > 0.5, (objective, r)


def test_predict__equals_predictions_inside_evaluate(sim, tmp_path):
    phenotypes = sim.phenotypes
    table = phenotypes.table[phenotypes.table["cv"].astype(str).isin(["0", "1"])]
    options = {"params": {**SMALL, "epochs": 2}, "workdir": tmp_path / "models"}
    predictions, _ = cross_validate(
        Phenotypes(table, "sim"),
        sim.genotypes,
        ["perceiver"],
        progress=False,
        options=options,
    )
    g = sim.genotypes
    write_chroms(g.markers, tmp_path / "c.tsv")
    write_markers(g, tmp_path / "m.tsv")
    model_dir = tmp_path / "models" / "perceiver" / "fold-0"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "c.tsv"),
                str(tmp_path / "m.tsv"),
                "--model",
                str(model_dir),
                "--out",
                str(tmp_path / "p.tsv"),
            ]
        )
        == 0
    )
    predicted = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    fold0 = predictions[predictions["cv"].astype(str) == "0"]
    merged = fold0.merge(predicted, on=["name", "block"], suffixes=("", "_cli"))
    assert len(merged) == len(fold0)
    np.testing.assert_allclose(
        merged["prediction"], merged["prediction_cli"], rtol=1e-4, atol=1e-5
    )


def test_finetune__from_pretrained_with_frozen_head_phase(sim, tmp_path):
    g = sim.genotypes
    pretrain_encoder(g, tmp_path / "pre", SMALL, {"max_steps": 3})
    params = {
        "epochs": 2,
        "head_epochs": 2,
        "progress": False,
        "ensemble": 2,
        "additive": False,  # the networks alone, so that the seeds differ
        "separate_blocks": True,
    }
    members = finetune(
        sim.phenotypes, g, tmp_path / "ft", params, pretrained=tmp_path / "pre"
    )
    assert len(members) == 2 * 2  # two seeds x one model per block
    assert (tmp_path / "ft" / "member-0-block-1" / "phase1" / "metrics.csv").exists()
    table = prediction_table(load_predictor(tmp_path / "ft", g), g)
    assert {"name", "block", "prediction", "sd"} <= set(table.columns)
    assert len(table) == g.n_individuals * 2
    assert table["prediction"].notna().all() and (table["sd"] > 0).all()


def test_frozen_features__cached_once_then_each_rows_own(sim):
    """A cache computes an encoder's features of every individual once; a subset
    read from it equals that subset computed alone, and another encoder gets its
    own entry."""
    g = sim.genotypes
    rows = np.random.default_rng(0).permutation(g.n_individuals)[:37]
    cache = {}
    model = model_for(g, "pool")
    direct = encoder_features(model, g, rows)
    cached = frozen_features(model, g, rows, cache)
    torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-6)
    assert len(cache) == 1 and next(iter(cache.values())).shape[0] == g.n_individuals
    frozen_features(model, g, rows[:5], cache)
    assert len(cache) == 1  # read, not recomputed
    other = model_for(g, "pool")
    with torch.no_grad():
        other.encoder.latents.add_(1.0)
    moved = frozen_features(other, g, rows, cache)
    assert len(cache) == 2
    assert not torch.allclose(moved, cached)


def test_finetune__feature_cache_and_single_head_checkpoint_change_no_prediction(
    sim, tmp_path
):
    """Finetuning a frozen pretrained encoder with a feature cache shared by two
    runs predicts as without it; the head phase checkpoints once, at its end."""
    g = sim.genotypes
    pretrain_encoder(g, tmp_path / "pre", SMALL, {"max_steps": 3})
    params = {"head_epochs": 4, "patience": 10, "progress": False}
    cache = {}
    runs = {}
    for name, feature_cache in [("a", cache), ("b", cache), ("plain", None)]:
        finetune(
            sim.phenotypes, g, tmp_path / name, params,
            pretrained=tmp_path / "pre", feature_cache=feature_cache,
        )  # fmt: skip
        runs[name] = load_predictor(tmp_path / name, g).predict(g)
    assert len(cache) == 1
    np.testing.assert_allclose(runs["a"], runs["plain"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(runs["b"], runs["plain"], rtol=1e-4, atol=1e-5)
    phase = tmp_path / "a" / "member-0" / "phase1"
    evaluations = pd.read_csv(phase / "metrics.csv")
    assert len(evaluations) == 4 + 1  # every epoch validated, the start too
    assert [p.name for p in (phase / "checkpoints").glob("step-*")] == [
        f"step-{evaluations['step'].iloc[-1]:08d}"
    ]


def test_finetune__refuses_typed_options_that_reshape_the_pretrained_encoder(
    sim, tmp_path
):
    g = sim.genotypes
    pretrain_encoder(g, tmp_path / "pre", SMALL, {"max_steps": 1})
    with pytest.raises(InputError, match="differs from the pretrained encoder"):
        finetune(
            sim.phenotypes, g, tmp_path / "ft", {"epochs": 1, "progress": False},
            {"n_latents": SMALL["n_latents"] * 2}, pretrained=tmp_path / "pre",
        )  # fmt: skip
    assert not (tmp_path / "ft").exists()
    # a --params key is held to the same rule, not silently replaced
    with pytest.raises(InputError, match="--params.*n_latents.*differs"):
        finetune(
            sim.phenotypes, g, tmp_path / "ft",
            {"epochs": 1, "progress": False, "n_latents": SMALL["n_latents"] * 2},
            pretrained=tmp_path / "pre",
        )  # fmt: skip
    assert not (tmp_path / "ft").exists()
    # a runtime knob and a value equal to the pretrained one are accepted, and a
    # runtime knob in --params is honoured
    typed = {"chunk_size": 64, "n_latents": SMALL["n_latents"]}
    params = {"epochs": 1, "progress": False, "dropout": 0.25}
    finetune(
        sim.phenotypes, g, tmp_path / "ok", params, typed, pretrained=tmp_path / "pre"
    )
    saved = json.loads(next((tmp_path / "ok").rglob("config.json")).read_text())
    assert saved["model"]["dropout"] == 0.25


def test_finetune__warns_when_a_pretrained_encoder_lacks_the_asked_graph(sim, tmp_path):
    g = sim.genotypes
    pretrain_encoder(g, tmp_path / "pre", SMALL, {"max_steps": 1})
    with pytest.warns(InputWarning, match="--marker-graph ignored"):
        finetune(
            sim.phenotypes, g, tmp_path / "ft", {"epochs": 1, "progress": False},
            {"marker_graph": "ld"}, pretrained=tmp_path / "pre",
        )  # fmt: skip


def test_finetune__separate_blocks_train_each_block_on_its_records_only(sim, tmp_path):
    """A block's model never sees another block's responses: scrambling block 1
    leaves block 0's predictions unchanged."""
    params = {**SMALL, "epochs": 2, "separate_blocks": True, "additive": False}
    finetune(sim.phenotypes, sim.genotypes, tmp_path / "a", params)
    scrambled = sim.phenotypes.table.copy()
    in_block_1 = scrambled["block"] == 1
    scrambled.loc[in_block_1, "response"] = scrambled.loc[
        in_block_1, "response"
    ].to_numpy()[::-1]
    finetune(Phenotypes(scrambled, "sim"), sim.genotypes, tmp_path / "b", params)
    a = load_predictor(tmp_path / "a").predict(sim.genotypes)
    b = load_predictor(tmp_path / "b").predict(sim.genotypes)
    np.testing.assert_array_equal(a[:, 0], b[:, 0])
    assert not np.allclose(a[:, 1], b[:, 1])


def test_cli__seed_style_finetune_writes_predictions(sim, tmp_path):
    g = sim.genotypes
    write_chroms(g.markers, tmp_path / "c.tsv")
    write_markers(g, tmp_path / "m.tsv")
    write_phenotypes(sim.phenotypes, tmp_path / "p.tsv")
    (tmp_path / "params.json").write_text(
        '{"width": 16, "n_latents": 8, "epochs": 2, "progress": false, '
        '"separate_blocks": false}'
    )
    code = seed_finetune(
        [
            str(tmp_path / "p.tsv"),
            str(tmp_path / "c.tsv"),
            str(tmp_path / "m.tsv"),
            "--model",
            str(tmp_path / "ft"),
            "--cv",
            "0",
            "--params",
            str(tmp_path / "params.json"),
            "--block-strategy",
            "latent",
            "--predictions",
            str(tmp_path / "pred.tsv"),
        ]
    )
    assert code == 0
    pred = pd.read_csv(tmp_path / "pred.tsv", sep="\t")
    assert len(pred) == g.n_individuals * 2
    assert pred["response"].notna().sum() == len(sim.phenotypes.table)
