"""Finetuning with panel attention (issue 16, item 5): the panel is the training
fold's individuals, a query never copies itself, the copies do not depend on the
panel's order, and finetune -> predict runs through the command line."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from gperceiver.cli import main
from gperceiver.data import Genotypes, Phenotypes
from gperceiver.finetuning import finetune, load_predictor
from gperceiver.finetuning.panel import fit_panel_input
from gperceiver.io import write_chroms, write_markers, write_phenotypes
from gperceiver.nn.panel import PanelConfig, PanelGenotypes, name_ids
from gperceiver.pretraining import pretrain_encoder
from gperceiver.simulate import SimulationConfig, simulate

CONFIG = PanelConfig(block=8, head_radii=(1, 2))
TINY = {
    "width": 16,
    "n_latents": 4,
    "self_layers": 1,
    "encode_iters": 1,
    "epochs": 2,
    "head_epochs": 2,
    "panel_fit_steps": 5,
    "panel_window": 8,
    "progress": False,
}


@pytest.fixture(scope="module")
def sim():
    config = SimulationConfig(
        n_individuals=50,
        n_markers=120,
        n_chromosomes=2,
        n_qtl=10,
        n_environments=1,
        n_folds=5,
        missing_rate=0.02,
        seed=3,
    )
    return simulate(config)


def _folds(sim):
    table = sim.phenotypes.table
    names = sim.genotypes.names
    val_names = set(table.loc[table["cv"].astype(str) == "0", "name"])
    val = np.flatnonzero(np.isin(names, list(val_names)))
    train = np.setdiff1d(np.arange(len(names)), val)
    return train, val


def _with_alleles(g: Genotypes, alleles: np.ndarray, order=None) -> Genotypes:
    order = np.arange(g.n_individuals) if order is None else order
    return Genotypes(alleles[order], g.names[order], g.markers, g.n_alleles)


def test_panel__validation_individuals_never_enter_training_copies(sim):
    g = sim.genotypes
    train, val = _folds(sim)
    every = np.arange(g.n_individuals)
    before = fit_panel_input(g, train, every, CONFIG, steps=5, seed=0)
    changed = g.alleles.copy()
    changed[val] = changed[val][:, :, ::-1]  # swap the copies...
    changed[val, :, 0] = 3 - np.maximum(changed[val, :, 0], 1)  # ...and flip some
    after = fit_panel_input(
        _with_alleles(g, changed), train, every, CONFIG, steps=5, seed=0
    )
    # training individuals' copies (and the fitted attention) are unchanged
    assert torch.equal(before.copies.take(train), after.copies.take(train))
    # the validation individuals' own copies do follow their genotypes
    assert not torch.allclose(before.copies.take(val), after.copies.take(val))
    # control: the same change to training individuals does move the others'
    moved = g.alleles.copy()
    moved[train[:10]] = changed[val[:10]]
    control = fit_panel_input(
        _with_alleles(g, moved), train, every, CONFIG, steps=0, seed=0
    )
    plain = fit_panel_input(g, train, every, CONFIG, steps=0, seed=0)
    rest = train[10:]
    assert not torch.allclose(plain.copies.take(rest), control.copies.take(rest))
    assert set(before.panel.ids.tolist()) == set(name_ids(g.names[train]).tolist())


def test_panel__a_training_individual_never_copies_itself(sim):
    g = sim.genotypes
    train, _ = _folds(sim)
    fitted = fit_panel_input(g, train, train, CONFIG, steps=5, seed=0)
    attention, chrom = fitted.attention, g.markers.chrom
    for i in train[:3]:
        others = PanelGenotypes.from_genotypes(g, train[train != i])
        query = PanelGenotypes.from_genotypes(g, [i])
        without = attention(query, others, chrom)[0]
        assert torch.allclose(fitted.copies.take([i])[0], without, atol=1e-6)
        # the check can fail: the same genotypes under another name copy
        # themselves (distance 0) and land far closer to their own genotype
        renamed = PanelGenotypes(
            query.genotype, query.ids + 1, query.ploidy, query.n_alleles
        )
        panel = PanelGenotypes.from_genotypes(g, train)
        itself = attention(renamed, panel, chrom)[0]
        own = query.genotype[0].long()
        called = own >= 0
        p_self = itself[called].gather(1, own[called, None]).mean()
        p_copy = without[called].gather(1, own[called, None]).mean()
        assert p_self > p_copy + 0.05


def test_panel__copies_do_not_depend_on_the_panel_order(sim):
    g = sim.genotypes
    train, _ = _folds(sim)
    every = np.arange(g.n_individuals)
    plain = fit_panel_input(g, train, every, CONFIG, steps=0, seed=0)
    order = np.random.default_rng(0).permutation(g.n_individuals)
    shuffled_g = _with_alleles(g, g.alleles, order)
    position = np.argsort(order)  # old row -> new row
    shuffled = fit_panel_input(
        shuffled_g, position[train], every, CONFIG, steps=0, seed=0
    )
    for rows in (train, np.setdiff1d(every, train)):
        assert torch.allclose(
            plain.copies.take(rows), shuffled.copies.take(position[rows]), atol=1e-5
        )


def _write(sim, directory):
    write_chroms(sim.genotypes.markers, directory / "chroms.tsv")
    write_markers(sim.genotypes, directory / "markers.tsv")
    write_phenotypes(sim.phenotypes, directory / "phenotypes.tsv")
    return [str(directory / f) for f in ("phenotypes.tsv", "chroms.tsv", "markers.tsv")]


def test_panel__finetune_and_predict_through_the_cli(sim, tmp_path):
    files = _write(sim, tmp_path)
    out, preds = tmp_path / "model", tmp_path / "predictions.tsv"
    params = tmp_path / "params.json"
    params.write_text(json.dumps({**TINY, "panel": True}))
    argv = ["finetune", *files, "--out", str(out), "--cv", "0", "--params", str(params)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["head"]["panel"] and config["head"]["panel_window"] == 8
    train, val = _folds(sim)
    assert config["head"]["panel_rows"] == len(train)
    predictor = load_predictor(out, sim.genotypes)
    member = predictor.members[0]
    # the saved panel is the training fold, no validation individual
    ids = set(member.panel.ids.tolist())
    assert ids == set(name_ids(sim.genotypes.names[train]).tolist())
    assert not ids & set(name_ids(sim.genotypes.names[val]).tolist())
    assert main(["predict", *files[1:], "--model", str(out), "--out", str(preds)]) == 0
    written = pd.read_csv(preds, sep="\t")
    assert len(written) == sim.genotypes.n_individuals
    assert np.isfinite(written["prediction"]).all()
    direct = predictor.predict(sim.genotypes)[:, 0, 0]
    assert np.allclose(written["prediction"], direct, atol=1e-5)
    # predictions read the copies of the saved panel: with a network that is not
    # (nearly) zero, another projection of them moves them, and so does another
    # panel attention
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        member.readout[-1].weight.normal_(0, 1.0, generator=generator)
        before = predictor.predict(sim.genotypes)[:, 0, 0]
        member.panel_embed.weight.normal_(0, 1.0, generator=generator)
    projected = predictor.predict(sim.genotypes)[:, 0, 0]
    assert not np.allclose(projected, before, atol=1e-4)
    with torch.no_grad():
        member.panel.attention.layers[0].log_scale.fill_(-5.0)  # ~uniform copies
    assert not np.allclose(predictor.predict(sim.genotypes)[:, 0, 0], projected)


def test_panel__with_a_pretrained_encoder_the_projection_trains(sim, tmp_path):
    g = sim.genotypes
    pretrain_encoder(
        g,
        tmp_path / "pre",
        {k: TINY[k] for k in ("width", "n_latents", "self_layers", "encode_iters")}
        | {"epochs": 1, "progress": False},
        resume=False,
    )
    table = sim.phenotypes.table
    phenotypes = Phenotypes(table[table["cv"].astype(str) != "0"], "train")
    params = {
        k: v
        for k, v in TINY.items()
        if k not in ("width", "n_latents", "self_layers", "encode_iters")
    }
    (model,) = finetune(
        phenotypes,
        g,
        tmp_path / "ft",
        {**params, "panel": True},
        pretrained=tmp_path / "pre",
    )
    # the panel phase ran: the projection trains, the encoder and the fitted
    # panel attention stay frozen
    metrics = pd.read_csv(tmp_path / "ft" / "member-0" / "train" / "metrics.csv")
    assert len(metrics) > 0
    assert model.panel_embed.weight.requires_grad
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.panel.parameters())
