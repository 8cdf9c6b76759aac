"""Twinned (contrastive) pretraining: shared-copy targets, pairing, symmetry, the
task's learning, checkpoints finetuning can read, and the command line."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from gperceiver.checkpoint import FORMAT_VERSION, read_json
from gperceiver.cli import main, seed_pretrain
from gperceiver.data import Genotypes, MarkerMap
from gperceiver.finetuning import finetune
from gperceiver.io import InputError, write_chroms, write_markers
from gperceiver.nn.perceiver import MaskedMarkerModel, PerceiverConfig
from gperceiver.nn.twinned import TwinnedModel
from gperceiver.pretraining import (
    data_sizes,
    impute,
    load_masked_model,
    pretrain_encoder,
)
from gperceiver.simulate import SimulationConfig, simulate
from gperceiver.tasks.masked import MaskedConfig
from gperceiver.tasks.twinned import TwinnedTask, shared_copies
from pretrain_helpers import TINY


@pytest.fixture(scope="module")
def sim():
    return simulate(
        SimulationConfig(
            n_individuals=100,
            n_markers=300,
            n_chromosomes=2,
            n_environments=2,
            n_qtl=20,
            missing_rate=0.02,
            seed=4,
        )
    )


def genotypes_of(alleles, n_alleles) -> Genotypes:
    alleles = np.asarray(alleles, dtype=np.uint8)
    n, m, _ = alleles.shape
    markers, _ = MarkerMap.from_columns(
        ["1"] * m, [f"m{i}" for i in range(m)], np.arange(m)
    )
    return Genotypes(alleles, np.array([f"i{i}" for i in range(n)]), markers, n_alleles)


def multiset_intersection(first, second) -> int:
    return sum((Counter(first) & Counter(second)).values())


def test_shared_copies__diploid_hand_written():
    pairs = {  # (first, second): copies shared; A = 1, B = 2
        ((1, 1), (1, 1)): 2,  # AA / AA
        ((1, 2), (2, 1)): 2,  # AB / BA: copy order does not matter
        ((1, 2), (2, 2)): 1,  # AB / BB
        ((1, 1), (2, 2)): 0,  # AA / BB
        ((1, 2), (1, 3)): 1,  # AB / AC, three alleles
        ((2, 3), (1, 1)): 0,
    }
    first = torch.tensor([p[0] for p in pairs])
    second = torch.tensor([p[1] for p in pairs])
    assert shared_copies(first, second, 3).tolist() == list(pairs.values())
    assert shared_copies(second, first, 3).tolist() == list(pairs.values())


def test_shared_copies__tetraploid_multiallelic_hand_written():
    pairs = {
        ((1, 1, 2, 2), (1, 2, 2, 2)): 3,  # AABB / ABBB
        ((1, 1, 2, 3), (1, 2, 2, 3)): 3,  # AABC / ABBC: min(2,1)+min(1,2)+min(1,1)
        ((1, 2, 3, 4), (4, 4, 3, 3)): 2,  # ABCD / DDCC
        ((1, 1, 1, 1), (2, 2, 3, 4)): 0,
        ((4, 4, 4, 4), (4, 4, 4, 4)): 4,
        ((1, 1, 1, 2), (1, 1, 2, 2)): 3,
    }
    first = torch.tensor([p[0] for p in pairs])
    second = torch.tensor([p[1] for p in pairs])
    assert shared_copies(first, second, 4).tolist() == list(pairs.values())


@pytest.mark.parametrize("ploidy,n_alleles", [(1, 2), (2, 4), (3, 3), (6, 5)])
def test_shared_copies__equals_multiset_intersection(ploidy, n_alleles):
    rng = np.random.default_rng(ploidy)
    first = rng.integers(1, n_alleles + 1, size=(200, ploidy))
    second = rng.integers(1, n_alleles + 1, size=(200, ploidy))
    expected = [multiset_intersection(a, b) for a, b in zip(first, second, strict=True)]
    got = shared_copies(torch.from_numpy(first), torch.from_numpy(second), n_alleles)
    assert got.tolist() == expected
    assert set(expected) <= set(range(ploidy + 1))


def test_twinned_batch__targets_shared_hidden_and_never_missing_in_either():
    """Tetraploid, four alleles: a pair's targets are the same for both twins, hidden
    in both, skip loci where either twin has a missing copy, and carry the shared
    copies of the original genotypes."""
    rng = np.random.default_rng(0)
    n, m, ploidy, n_alleles = 6, 40, 4, 4
    alleles = np.sort(rng.integers(1, n_alleles + 1, size=(n, m, ploidy)), -1)
    # every individual misses one copy at its own 5 loci; 30 loci stay complete
    # in every pair, more than the targets drawn
    for i in range(n):
        alleles[i, 5 * i : 5 * i + 5, 0] = 0
    g = genotypes_of(alleles, n_alleles)
    config = MaskedConfig(target_fraction=0.25)
    task = TwinnedTask(g, g.allele_frequencies(), config)
    for seed in range(5):
        masked, inputs, targets, valid, shared, counts = task.batch(
            np.arange(n), torch.Generator().manual_seed(seed)
        )
        assert valid.all() and targets.shape == (n, 10)
        assert torch.equal(targets[0::2], targets[1::2])
        # which individual each masked row is: its unmasked loci identify it
        who = [
            next(
                i
                for i in range(n)
                if np.array_equal(
                    row.numpy()[row.numpy()[:, 0] != n_alleles + 1],
                    alleles[i][row.numpy()[:, 0] != n_alleles + 1],
                )
            )
            for row in masked
        ]
        assert sorted(who) == list(range(n))
        for k in range(n // 2):
            a, b = who[2 * k], who[2 * k + 1]
            loci = targets[2 * k].numpy()
            assert (alleles[[a, b]][:, loci] > 0).all()
            assert (masked[2 * k, loci] == n_alleles + 1).all()
            assert (masked[2 * k + 1, loci] == n_alleles + 1).all()
            expected = [
                multiset_intersection(alleles[a, locus], alleles[b, locus])
                for locus in loci
            ]
            assert shared[k].tolist() == expected
            assert (counts[2 * k].sum(-1) == ploidy).all()


def test_twinned_batch__flags_pairs_with_too_few_complete_loci():
    alleles = np.ones((2, 10, 2), dtype=np.uint8)
    alleles[0, :4, 1] = 0
    alleles[1, 4:7, 0] = 0  # together 7 of 10 loci are missing in one twin
    g = genotypes_of(alleles, 2)
    task = TwinnedTask(g, g.allele_frequencies(), MaskedConfig(target_fraction=0.5))
    _, _, targets, valid, _, _ = task.batch(np.arange(2), torch.Generator())
    assert valid.sum(1).tolist() == [3, 3]
    assert set(targets[0][valid[0]].tolist()) == {7, 8, 9}


def tiny_model(genotypes, **overrides) -> TwinnedModel:
    torch.manual_seed(0)
    sizes = {k: v for k, v in TINY.items() if k != "progress"}
    config = PerceiverConfig(**data_sizes(genotypes), **{**sizes, **overrides})
    markers = genotypes.markers
    return TwinnedModel(config, markers.relative_pos(), markers.chrom).eval()


@pytest.mark.parametrize("decoder_window", [0, 4])
def test_decode_pairs__swapping_the_pair_gives_identical_outputs(sim, decoder_window):
    g = sim.genotypes
    model = tiny_model(
        g.subset(markers=np.arange(100)),
        decoder_window=decoder_window,
        decoder_layers=2,
    )
    alleles = torch.from_numpy(g.alleles[:8, :100].astype(np.int64))
    targets = torch.randint(0, 100, (4, 12), generator=torch.Generator())
    targets = targets.repeat_interleave(2, 0)
    idx = torch.arange(100)
    swap = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    with torch.no_grad():
        logits = model.forward_pairs(alleles, idx, targets)
        swapped = model.forward_pairs(alleles[swap], idx, targets[swap])
        other = model.forward_pairs(alleles[[0, 2, 1, 3, 4, 5, 6, 7]], idx, targets)
    assert logits.shape == (4, 12, g.ploidy + 1)
    assert torch.equal(logits, swapped)
    assert not torch.allclose(logits[0], other[0])  # other partners, other output


def test_forward_pairs__targets_read_the_inputs_positions(sim):
    """forward_pairs() hands the pair decoder the inputs' position vectors;
    that equals encode + decode_pairs recomputing each target's position from
    its marker index: logits and every parameter's gradient."""
    g = sim.genotypes
    model = tiny_model(g.subset(markers=np.arange(100)), decoder_window=4)
    model.train()
    alleles = torch.from_numpy(g.alleles[:4, :100].astype(np.int64))
    targets = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(1))
    targets = targets.repeat_interleave(2, 0)
    idx = torch.arange(20, 80)  # a subset of the map: input positions != markers
    alleles = alleles[:, 20:80]

    def run(use_forward: bool):
        torch.manual_seed(3)  # the same dropout masks both ways
        model.zero_grad()
        if use_forward:
            logits = model.forward_pairs(alleles, idx, targets)
        else:
            latents, tokens = model.encode(alleles, idx, return_tokens=True)
            logits = model.decode_pairs(latents, tokens, idx, targets)
        weights = torch.linspace(-1, 1, logits.numel()).view_as(logits)
        (logits * weights).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return [logits.detach(), *grads]

    got, want = run(True), run(False)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_twinned_task__encodes_each_individual_once_per_batch(sim):
    g = sim.genotypes
    model = tiny_model(g).train()
    task = TwinnedTask(g, g.allele_frequencies(), MaskedConfig(), masked_weight=1.0)
    batches = []
    model.encoder.register_forward_hook(
        lambda module, args, output: batches.append(output.shape[0])
    )
    loss, metrics = task.loss(model, np.arange(8), torch.Generator().manual_seed(0))
    loss.backward()
    assert batches == [8]
    assert {"shared_loss", "shared_accuracy", "masked_loss", "accuracy"} <= set(metrics)
    task.loss(model, np.arange(10, 17), torch.Generator().manual_seed(0))
    assert batches == [8, 6]  # an odd batch leaves one individual out


def test_pretrain_contrastive__learns_shared_copies_beyond_the_class_prior(tmp_path):
    """Genotypes constant over blocks of 10 markers: a hidden locus's neighbours give
    both twins' genotypes, so its shared copies are learnable exactly."""
    rng = np.random.default_rng(0)
    per_block = np.sort(rng.integers(1, 3, size=(200, 10, 2)), -1)
    g = genotypes_of(np.repeat(per_block, 10, axis=1), 2)
    pretrain_encoder(
        g,
        tmp_path / "pre",
        {**TINY, "dropout": 0.0},
        {"epochs": 20, "lr": 3e-3, "patience": 100, "task": "contrastive"},
    )
    metrics = pd.read_csv(tmp_path / "pre" / "metrics.csv")
    assert "train_masked_loss" not in metrics
    # what a model of the class prior scores: the most frequent shared count
    a, b = per_block[0::2].reshape(-1, 2), per_block[1::2].reshape(-1, 2)
    shared = [multiset_intersection(x, y) for x, y in zip(a, b, strict=True)]
    prior = np.bincount(shared).max() / len(shared)
    assert metrics["val_shared_accuracy"].iloc[-3:].mean() > prior + 0.2
    config = read_json(tmp_path / "pre" / "config.json")
    assert (
        config["task"] == "contrastive" and config["format_version"] == FORMAT_VERSION
    )


def test_finetune__reads_the_encoder_of_a_contrastive_model(sim, tmp_path):
    g = sim.genotypes
    pretrain_encoder(g, tmp_path / "pre", TINY, {"max_steps": 3, "task": "contrastive"})
    loaded, _ = load_masked_model(tmp_path / "pre", g)
    assert isinstance(loaded, TwinnedModel)
    # a frozen encoder ("unfreeze": "") keeps exactly the pretrained weights
    members = finetune(
        sim.phenotypes,
        g,
        tmp_path / "ft",
        {"head_epochs": 1, "unfreeze": "", "progress": False},
        pretrained=tmp_path / "pre",
    )
    pretrained = loaded.state_dict()
    for member in members:
        encoder = {
            k: v
            for k, v in member.state_dict().items()
            if k.startswith(("embed.", "encoder."))
        }
        assert encoder and all(
            torch.equal(v, pretrained[k]) for k, v in encoder.items()
        )


def test_pretrain_both__logs_both_losses_and_imputes(sim, tmp_path):
    g = sim.genotypes
    model = pretrain_encoder(
        g,
        tmp_path / "both",
        TINY,
        {"max_steps": 4, "eval_every": 2, "task": "both", "masked_weight": 0.5},
    )
    metrics = pd.read_csv(tmp_path / "both" / "metrics.csv")
    total = metrics["val_shared_loss"] + 0.5 * metrics["val_masked_loss"]
    np.testing.assert_allclose(metrics["val_loss"], total, rtol=1e-5)
    config = read_json(tmp_path / "both" / "config.json")
    assert config["task"] == "both" and config["contrastive"]["masked_weight"] == 0.5
    loaded, _ = load_masked_model(tmp_path / "both", g)
    x = torch.from_numpy(g.alleles[:4].astype(np.int64))
    idx, targets = torch.arange(g.n_markers), torch.tensor([[3, 50], [3, 50]] * 2)
    model.eval()
    with torch.no_grad():
        assert torch.equal(
            model.forward_pairs(x, idx, targets), loaded.forward_pairs(x, idx, targets)
        )
    filled = impute(loaded, g, progress=False).genotypes.alleles
    assert (filled > 0).all()


def test_pretrain_masked__still_saves_a_masked_model(sim, tmp_path):
    pretrain_encoder(sim.genotypes, tmp_path / "m", TINY, {"max_steps": 1})
    loaded, config = load_masked_model(tmp_path / "m", sim.genotypes)
    assert type(loaded) is MaskedMarkerModel and config["task"] == "masked"


def test_pretrain_contrastive__raises_on_too_few_individuals(tmp_path):
    g = genotypes_of(np.ones((2, 10, 2)), 2)
    with pytest.raises(InputError, match="pairs individuals"):
        pretrain_encoder(
            g, tmp_path / "m", TINY, {"max_steps": 1, "task": "contrastive"}
        )


def test_pretrain__raises_on_unknown_task(sim, tmp_path):
    with pytest.raises(InputError, match="task must be one of"):
        pretrain_encoder(sim.genotypes, tmp_path / "m", TINY, {"task": "twins"})


def test_cli__task_options_and_contrastive_model_refused_by_impute(
    sim, tmp_path, capsys
):
    g = sim.genotypes.subset(individuals=np.arange(40), markers=np.arange(80))
    chroms, markers = tmp_path / "c.tsv", tmp_path / "m.tsv"
    write_chroms(g.markers, chroms)
    write_markers(g, markers)
    common = [str(chroms), str(markers), "--max-steps", "1", "--no-progress"]
    common += ["--width", "16", "--latents", "4"]
    assert (
        main(["pretrain", *common, "--out", str(tmp_path / "b"), "--task", "both"])
        + main(
            [
                "pretrain",
                *common,
                "--out",
                str(tmp_path / "c"),
                "--task",
                "contrastive",
                "--masked-weight",
                "0.25",
            ]
        )
        == 0
    )
    assert read_json(tmp_path / "b" / "config.json")["task"] == "both"
    config = read_json(tmp_path / "c" / "config.json")
    assert config["task"] == "contrastive"
    assert config["contrastive"]["masked_weight"] == 0.25
    out = tmp_path / "imputed.tsv"
    code = main(
        ["impute", str(chroms), str(markers), "--model", str(tmp_path / "c")]
        + ["--out", str(out)]
    )
    assert code == 1 and not out.exists()
    assert "--task contrastive" in capsys.readouterr().err
    # the original tool's flags: --contrastive, with an allele weight > 0 both losses
    for flags, task in [
        (["--contrastive"], "contrastive"),
        (["--contrastive", "--contrastive-allele-weight", "0.5"], "both"),
    ]:
        out_dir = tmp_path / f"seed-{task}"
        assert seed_pretrain([*common, "--model", str(out_dir), *flags]) == 0
        assert read_json(out_dir / "config.json")["task"] == task
