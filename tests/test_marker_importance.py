"""Marker importance of the Perceiver with its additive path: the linear path's
credit in closed form, the QTL of a simulated trait found, and the TSV and plot
written by finetune."""

import numpy as np
import pandas as pd
import pytest

from gperceiver.cli import main
from gperceiver.data import Genotypes, MarkerMap
from gperceiver.finetuning import finetune, load_predictor
from gperceiver.importance import importance_parts, marker_importance
from gperceiver.io import write_chroms, write_markers, write_phenotypes
from gperceiver.nn.heads import HeadConfig, PhenotypeModel
from gperceiver.nn.perceiver import PerceiverConfig
from gperceiver.simulate import SimulationConfig, simulate

TINY = {"width": 16, "n_latents": 4, "epochs": 3, "progress": False}


def linear_model(rng, n=50, m=40, n_alleles=3, missing=0.05):
    """Random genotypes and a model whose additive path holds random effects
    (network readout at its zero start: the network credits nothing)."""
    alleles = rng.integers(1, n_alleles + 1, size=(n, m, 2)).astype(np.uint8)
    alleles[rng.random(alleles.shape) < missing] = 0
    markers, _ = MarkerMap.from_columns(
        ["1"] * m, [f"m{k}" for k in range(m)], range(m)
    )
    genotypes = Genotypes(
        np.sort(alleles, -1), np.array([f"i{k}" for k in range(n)]), markers, n_alleles
    )
    config = PerceiverConfig(
        n_alleles=n_alleles, ploidy=2, n_markers=m, n_chroms=1, width=8, n_latents=2
    )
    model = PhenotypeModel(
        config, HeadConfig(n_environments=2), markers.relative_pos(), markers.chrom
    )
    effects = rng.normal(size=(2, m, n_alleles))
    frequencies = genotypes.allele_frequencies()
    for block in range(2):
        model.additive.set_environment(block, 0.3, effects[block], frequencies, 2)
    return model, genotypes, effects.sum(0), frequencies


def test_importance_parts__linear_path_is_effect_times_dosage_deviation():
    model, g, effects, p = linear_model(np.random.default_rng(3))
    parts = importance_parts(model, g, batch_size=7)
    # dosages counted directly, a missing copy at the allele frequency
    dosage = np.stack([(g.alleles == a + 1).sum(-1) for a in range(3)], -1)
    dosage = dosage + (g.alleles == 0).sum(-1)[..., None] * p[None]
    credit = ((dosage - dosage.mean(0)) * effects[None]).sum(-1)  # (N, M)
    expected = np.abs(credit).mean(0)
    np.testing.assert_allclose(parts["additive"], expected, rtol=1e-5, atol=1e-6)
    assert (parts["network"] == 0).all()  # the readout starts at zero
    np.testing.assert_allclose(parts["total"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(marker_importance(model, g), parts["total"])


def test_importance_parts__biallelic_marker_scores_substitution_effect_times_mad():
    model, g, effects, _ = linear_model(
        np.random.default_rng(4), n_alleles=2, missing=0
    )
    additive = importance_parts(model, g)["additive"]
    d2 = (g.alleles == 2).sum(-1).astype(np.float64)  # (N, M)
    mad = np.abs(d2 - d2.mean(0)).mean(0)
    substitution = np.abs(effects[:, 1] - effects[:, 0])
    np.testing.assert_allclose(additive, substitution * mad, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def few_qtl():
    return simulate(
        SimulationConfig(
            n_individuals=200, n_markers=300, n_chromosomes=2, n_qtl=3,
            heritability=0.9, dominance_variance=0.0, epistasis_variance=0.0,
            n_environments=1, seed=3,
        )
    )  # fmt: skip


def test_importance_parts__top_markers_are_the_qtl(few_qtl, tmp_path):
    finetune(few_qtl.phenotypes, few_qtl.genotypes, tmp_path, params=TINY)
    parts = importance_parts(load_predictor(tmp_path).members, few_qtl.genotypes)
    rank = np.argsort(np.argsort(-parts["total"]))  # 0 = most important
    assert rank[few_qtl.qtl].min() == 0  # the top marker is a QTL
    assert (rank[few_qtl.qtl] < 10).sum() >= 2  # of 300 markers
    assert parts["additive"].max() > 0


def test_finetune__writes_marker_importance_tsv_with_every_part(few_qtl, tmp_path):
    g = few_qtl.genotypes
    write_phenotypes(few_qtl.phenotypes, tmp_path / "phenos.tsv")
    write_chroms(g.markers, tmp_path / "chroms.tsv")
    write_markers(g, tmp_path / "markers.tsv")
    inputs = [str(tmp_path / f) for f in ("phenos.tsv", "chroms.tsv", "markers.tsv")]
    out = tmp_path / "model"
    assert main(["finetune", *inputs, "--out", str(out), "--width", "16",
                 "--latents", "4", "--epochs", "2", "--no-progress"]) == 0  # fmt: skip
    table = pd.read_csv(out / "marker_importance.tsv", sep="\t")
    assert list(table.columns) == [
        "marker", "chrom", "pos", "total", "network", "additive",
    ]  # fmt: skip
    assert table["marker"].tolist() == g.markers.names.tolist()
    expected = importance_parts(load_predictor(out).members, g)
    for part in ("total", "network", "additive"):
        np.testing.assert_allclose(table[part], expected[part], rtol=1e-4, atol=1e-9)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "additive path" in page and "marker_importance.tsv" in page
    assert f"{g.n_individuals} genotyped individuals" in page  # the data summary
