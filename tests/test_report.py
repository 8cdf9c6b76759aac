"""Marker importance (gradient x input), learning curves and the HTML reports."""

import re

import numpy as np
import pytest
import torch

from gperceiver.data import Genotypes, MarkerMap
from gperceiver.evaluate import NOTES, cross_validate, pooled_table
from gperceiver.finetuning import finetune, load_predictor, prediction_table
from gperceiver.importance import marker_importance
from gperceiver.nn.heads import HeadConfig, PhenotypeModel
from gperceiver.nn.perceiver import PerceiverConfig
from gperceiver.report import (
    evaluation_report,
    finetune_report,
    genome_x,
    plot_learning_curves,
    plot_marker_importance,
    read_learning_curves,
)
from gperceiver.simulate import SimulationConfig, simulate

PNG = b"\x89PNG\r\n\x1a\n"
TINY = {"width": 16, "n_latents": 4, "epochs": 3, "progress": False}


@pytest.fixture(scope="module")
def sim():
    return simulate(
        SimulationConfig(
            n_individuals=80,
            n_markers=200,
            n_chromosomes=2,
            n_qtl=5,
            heritability=0.9,
            seed=1,
        )
    )


@pytest.fixture(scope="module")
def model_dir(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetuned")
    finetune(sim.phenotypes, sim.genotypes, out, params={**TINY, "ensemble": 2})
    return out


@pytest.fixture(scope="module")
def members(model_dir, sim):
    return load_predictor(model_dir, sim.genotypes).members


def with_constant_marker(genotypes: Genotypes, j: int) -> Genotypes:
    alleles = genotypes.alleles.copy()
    alleles[:, j] = 1
    return Genotypes(alleles, genotypes.names, genotypes.markers, genotypes.n_alleles)


def test_importance_is_a_finite_non_negative_score_per_marker(sim, members):
    importance = marker_importance(members, sim.genotypes)
    assert importance.shape == (sim.genotypes.n_markers,)
    assert np.isfinite(importance).all() and (importance >= 0).all()
    assert importance.max() > 0
    # the ensemble's importance is the mean of its members'
    each = [marker_importance(m, sim.genotypes) for m in members]
    np.testing.assert_allclose(importance, np.mean(each, axis=0), rtol=1e-12)


def test_a_marker_without_variation_scores_zero(sim, members):
    genotypes = with_constant_marker(sim.genotypes, 17)
    importance = marker_importance(members[0], genotypes, batch_size=13)
    assert importance[17] == 0.0
    assert (np.delete(importance, 17) > 0).all()


def test_importance_ignores_batching_and_leaves_the_model_as_it_was(sim, model_dir):
    model = load_predictor(model_dir).members[0].train()
    rows = np.arange(0, 80, 3)
    with torch.no_grad():  # works inside a caller's no_grad too
        small = marker_importance(model, sim.genotypes, rows, batch_size=5)
    large = marker_importance(model, sim.genotypes, rows, batch_size=64)
    np.testing.assert_allclose(small, large, rtol=1e-5, atol=1e-9)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_importance_finds_the_marker_that_drives_the_trait():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, m, causal = 200, 200, 37
    alleles = np.sort(rng.integers(1, 3, size=(n, m, 2)), -1).astype(np.uint8)
    markers, _ = MarkerMap.from_columns(
        ["1"] * m, [f"m{k}" for k in range(m)], range(m)
    )
    genotypes = Genotypes(alleles, np.array([f"i{k}" for k in range(n)]), markers, 2)
    x = torch.from_numpy(alleles.astype(np.int64))
    y = torch.from_numpy((alleles[:, causal] == 2).sum(-1).astype(np.float32))
    y = (y - y.mean()) / y.std()
    config = PerceiverConfig(
        n_alleles=2,
        ploidy=2,
        n_markers=m,
        n_chroms=1,
        width=16,
        n_latents=4,
        dropout=0.0,
    )
    model = PhenotypeModel(
        config,
        HeadConfig(n_environments=1, head_dropout=0.0),
        markers.relative_pos(),
        markers.chrom,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    marker_idx = torch.arange(m)
    for _ in range(100):
        batch = torch.randint(0, n, (32,))
        loss = ((model(x[batch], marker_idx)[:, 0, 0] - y[batch]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        model.calibrate(model.features(x, marker_idx))
    importance = marker_importance(model, genotypes)
    assert (importance > importance[causal]).sum() < 0.05 * m


def test_genome_x_puts_chromosomes_side_by_side_in_order():
    markers, _ = MarkerMap.from_columns(
        ["chr10", "chr2", "chr2", "chr10"],
        ["a", "b", "c", "d"],
        [5.0, 100.0, 300.0, 1.0],
    )
    x, centres = genome_x(markers)  # map order: chr2 b, c; chr10 d, a
    gap = 0.02 * (200 + 4)
    np.testing.assert_allclose(x, [0.0, 200.0, 200 + gap, 204 + gap])
    np.testing.assert_allclose(centres, [100.0, 202 + gap])
    unplaced, _ = MarkerMap.from_columns(["unplaced"] * 3, ["a", "b", "c"], [7, 9, 30])
    x, centres = genome_x(unplaced)
    np.testing.assert_array_equal(x, [0, 1, 2])
    np.testing.assert_array_equal(centres, [1])


def test_importance_and_learning_curve_plots(sim, model_dir, tmp_path):
    importance = np.random.default_rng(0).random(sim.genotypes.n_markers)
    path = plot_marker_importance(importance, sim.genotypes.markers, tmp_path / "m.png")
    assert path.read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="shape"):
        plot_marker_importance(importance[:-1], sim.genotypes.markers, path)

    curves = read_learning_curves(model_dir)
    assert list(curves) == [f"member-{k}/train" for k in range(2)]  # a joint model
    assert {"epoch", "train_loss", "val_loss"} <= set(curves["member-0/train"])
    path = plot_learning_curves(curves, tmp_path / "curves.png")
    assert path.read_bytes().startswith(PNG)


def assert_self_contained(page: str, n_images: int) -> None:
    assert page.count('src="data:image/png;base64,') == n_images
    assert re.findall(r'src="(?!data:)', page) == []
    assert "href=" not in page and "<link" not in page and "<script" not in page


def test_evaluation_report_is_one_self_contained_html_file(
    sim, members, model_dir, tmp_path
):
    predictions, accuracy = cross_validate(
        sim.phenotypes, sim.genotypes, ["gblup"], progress=False
    )
    importance = marker_importance(members, sim.genotypes)
    report = evaluation_report(
        tmp_path,
        predictions,
        accuracy,
        notes={"gblup": "a note", **NOTES},
        curves=read_learning_curves(model_dir),
        importance=(importance, sim.genotypes.markers),
    )
    assert report == tmp_path / "report.html"
    page = report.read_text(encoding="utf-8")
    assert_self_contained(page, 4)
    for r in pooled_table(accuracy).to_numpy().ravel():
        assert f"{r:.3f}" in page
    assert "GBLUP" in page and "Note on gblup: a note." in page
    assert "perceiver-pretrained" not in page  # notes on methods not run
    top = sim.genotypes.markers.names[np.argmax(importance)]
    assert top in page
    for name in (
        "accuracy",
        "observed_vs_predicted",
        "learning_curves",
        "marker_importance",
    ):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp files


def test_finetune_report_with_fitted_values(sim, members, model_dir, tmp_path):
    table = prediction_table(load_predictor(model_dir), sim.genotypes)
    fitted = table.merge(sim.phenotypes.table, on=["name", "block"], how="left")
    report = finetune_report(
        tmp_path,
        read_learning_curves(model_dir),
        (marker_importance(members, sim.genotypes), sim.genotypes.markers),
        fitted,
    )
    page = report.read_text(encoding="utf-8")
    assert_self_contained(page, 3)
    assert "Fit to the training data" in page and "optimistic" in page
    curves_only = finetune_report(tmp_path / "bare", read_learning_curves(model_dir))
    assert_self_contained(curves_only.read_text(encoding="utf-8"), 1)
