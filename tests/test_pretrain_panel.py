"""Masked pretraining whose tokens read panel copies (issue 16 item 1): a batch's
copies never read its own hidden targets, the panel is the training individuals
only, the option runs through the command line, and a saved panel model is
reused by impute --model and finetune --pretrained (with panel: true only)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from gperceiver.cli import main
from gperceiver.data import Genotypes
from gperceiver.nn.panel import PanelGenotypes, name_ids
from gperceiver.pretraining import (
    load_masked_model,
    pretrain_encoder,
    split_individuals,
)
from gperceiver.simulate import SimulationConfig, simulate
from gperceiver.tasks.masked_panel import batch_copies
from pretrain_helpers import TINY

PANEL = {"panel": True, "panel_window": 8, "panel_fit_steps": 5}


@pytest.fixture(scope="module")
def sim():
    config = SimulationConfig(
        n_individuals=40,
        n_markers=120,
        n_chromosomes=2,
        n_qtl=10,
        n_environments=1,
        n_folds=5,
        missing_rate=0.02,
        seed=5,
    )
    return simulate(config)


@pytest.fixture(scope="module")
def trained(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("panel") / "model"
    params = {**TINY, **PANEL, "max_steps": 4, "val_fraction": 0.2}
    pretrain_encoder(sim.genotypes, out, params, resume=False)
    return out, params


def _with(g: Genotypes, alleles: np.ndarray) -> Genotypes:
    return Genotypes(alleles, g.names, g.markers, g.n_alleles)


def _flip(a: np.ndarray) -> np.ndarray:
    """Alleles 1 <-> 2, missing (0) kept."""
    return np.where(a > 0, 3 - a, 0).astype(a.dtype)


def test_panel_pretrain__a_batch_never_reads_its_own_hidden_targets(sim, trained):
    g = sim.genotypes
    model, _ = load_masked_model(trained[0], g)
    train, _ = split_individuals(g.n_individuals, 0.2, 0)
    rows = train[:4]
    inputs = torch.arange(g.n_markers)
    generator = torch.Generator().manual_seed(1)
    targets = torch.stack([torch.randperm(g.n_markers, generator=generator)[:12]])
    targets = targets.expand(len(rows), -1).sort(1).values
    valid = torch.ones(targets.shape, dtype=torch.bool)
    before = batch_copies(model.panel, g, rows, inputs, targets, valid)
    loci = targets[0].numpy()
    # the queries' own values at their hidden targets changed: the same copies
    changed = g.alleles.copy()
    changed[np.ix_(rows, loci)] = _flip(changed[np.ix_(rows, loci)])
    after = batch_copies(model.panel, _with(g, changed), rows, inputs, targets, valid)
    assert torch.equal(before, after)
    # control: the same change at loci that are not targets moves the copies ...
    others = np.setdiff1d(np.arange(g.n_markers), loci)[:12]
    moved = g.alleles.copy()
    moved[np.ix_(rows, others)] = _flip(moved[np.ix_(rows, others)])
    shifted = batch_copies(model.panel, _with(g, moved), rows, inputs, targets, valid)
    assert not torch.allclose(before, shifted)
    # ... and so does a change of the other panel members at the targets
    rest = np.setdiff1d(train, rows)
    members = g.alleles.copy()
    members[np.ix_(rest, loci)] = _flip(members[np.ix_(rest, loci)])
    model_b, _ = load_masked_model(trained[0], g)
    panel = PanelGenotypes.from_genotypes(_with(g, members), train)
    model_b.panel.set(panel, model.panel.attention)
    read = batch_copies(model_b.panel, g, rows, inputs, targets, valid)
    assert not torch.allclose(before[:, loci], read[:, loci], atol=1e-4)


def test_panel_pretrain__the_panel_is_the_training_individuals(sim, trained):
    g = sim.genotypes
    out, _ = trained
    model, config = load_masked_model(out, g)
    train, val = split_individuals(g.n_individuals, 0.2, 0)
    ids = set(model.panel.ids.tolist())
    assert ids == set(name_ids(g.names[train]).tolist())
    assert not ids & set(name_ids(g.names[val]).tolist())
    assert config["panel"]["panel"] and config["panel"]["panel_rows"] == len(train)
    assert config["result"]["n_val"] == len(val)


def _files(sim, directory):
    from gperceiver.io import write_chroms, write_markers, write_phenotypes

    write_chroms(sim.genotypes.markers, directory / "chroms.tsv")
    write_markers(sim.genotypes, directory / "markers.tsv")
    write_phenotypes(sim.phenotypes, directory / "phenotypes.tsv")
    return [str(directory / f) for f in ("chroms.tsv", "markers.tsv")]


def test_panel_pretrain__cli_then_impute_and_finetune(sim, tmp_path, capsys):
    files = _files(sim, tmp_path)
    params = tmp_path / "params.json"
    params.write_text(json.dumps({**TINY, **PANEL, "max_steps": 6, "eval_every": 3}))
    out = tmp_path / "pre"
    argv = ["pretrain", *files, "--out", str(out), "--params", str(params)]
    assert main(argv) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert np.isfinite(metrics["val_loss"].dropna()).all()
    assert len(metrics["val_loss"].dropna()) >= 2
    # the model reads its panel: the projection is trained away from zero
    model, _ = load_masked_model(out, sim.genotypes)
    assert model.panel_embed.weight.abs().sum() > 0
    # impute --model rebuilds the copies from the saved panel
    imputed = tmp_path / "imputed.tsv"
    argv = ["impute", *files, "--model", str(out), "--out", str(imputed)]
    assert main([*argv, "--no-progress"]) == 0
    assert imputed.exists()
    # finetune --pretrained: without panel refused in one line, with panel it runs
    phenos = str(tmp_path / "phenotypes.tsv")
    ft = {"epochs": 1, "head_epochs": 1, "panel_fit_steps": 2, "progress": False}
    ft_params = tmp_path / "ft.json"
    ft_params.write_text(json.dumps(ft))
    base = ["finetune", phenos, *files, "--pretrained", str(out), "--cv", "0"]
    base += ["--params", str(ft_params)]
    assert main([*base, "--out", str(tmp_path / "ft0")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pretrained with panel copies" in err[0]
    ft_params.write_text(json.dumps({**ft, "panel": True, "panel_window": 8}))
    assert main([*base, "--out", str(tmp_path / "ft1")]) == 0


def test_panel_pretrain__the_decoder_window_reads_the_enriched_tokens(sim, trained):
    g = sim.genotypes
    model, _ = load_masked_model(trained[0], g)
    rows = np.arange(2)
    alleles = torch.from_numpy(g.alleles[rows].astype(np.int64))
    idx = torch.arange(g.n_markers)
    copy = model.panel.copy_rows(g, rows)
    with torch.no_grad():
        model.panel_embed.weight.normal_(0, 1.0)
        latents, tokens = model.encode(alleles, idx, return_tokens=True, copy=copy)
        _, plain = model.encode(alleles, idx, return_tokens=True, copy=copy * 0)
        targets = torch.arange(0, g.n_markers, 7)
        # the same latents: only the tokens the decoder's window reads differ
        enriched = model.decode(latents, tokens, idx, targets)
        without = model.decode(latents, plain, idx, targets)
    assert model.config.decoder_window > 0
    assert not torch.allclose(enriched, without, atol=1e-4)


def test_panel_pretrain__refused_with_a_task_other_than_masked(sim, tmp_path):
    from gperceiver.io import InputError

    params = {**TINY, **PANEL, "max_steps": 1, "task": "both"}
    with pytest.raises(InputError, match="masked task only"):
        pretrain_encoder(sim.genotypes, tmp_path / "m", params, resume=False)
    assert not (tmp_path / "m" / "model.safetensors").exists()
