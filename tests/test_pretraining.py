"""Masked-marker pretraining: target sampling, learning, save/load, resume, impute."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from gperceiver.checkpoint import FORMAT_VERSION, load_tensors
from gperceiver.data import Genotypes, MarkerMap, allele_decoder
from gperceiver.io import (
    InputError,
    read_chroms,
    read_markers,
    write_chroms,
    write_markers,
)
from gperceiver.pretraining import impute, load_masked_model, pretrain_encoder
from gperceiver.simulate import SimulationConfig, simulate
from gperceiver.tasks.masked import (
    MaskedConfig,
    MaskedMarkerTask,
    complete_genotypes,
    sample_targets,
    target_log_weights,
)
from pretrain_helpers import SLOW_STEPS, TINY


@pytest.fixture(scope="module")
def population():
    return simulate(
        SimulationConfig(
            n_individuals=120, n_markers=400, n_chromosomes=2, missing_rate=0.02, seed=3
        )
    ).genotypes


def test_sample_targets__never_missing_and_unique():
    gen = torch.Generator().manual_seed(0)
    alleles = torch.randint(1, 3, (64, 50, 2))
    alleles[:, :10, 0] = 0  # first ten loci half-missing everywhere
    weights = target_log_weights(np.full((50, 2), 0.5), 0.5)
    targets, valid = sample_targets(alleles, weights, 20, gen)
    assert valid.all() and (targets >= 10).all()
    assert all(len(set(row.tolist())) == 20 for row in targets)
    # fewer eligible loci than targets: extra picks are flagged invalid
    targets, valid = sample_targets(alleles, weights, 45, gen)
    assert valid.sum(1).eq(40).all()


def test_sample_targets__favours_rare_alleles():
    gen = torch.Generator().manual_seed(0)
    freq = np.array([[0.9, 0.1]] * 200)
    alleles = torch.ones(2000, 200, 2, dtype=torch.long)
    alleles[:, :100] = 2  # loci 0..99 carry the rare allele twice
    weights = target_log_weights(freq, 1.0)
    targets, _ = sample_targets(alleles, weights, 1, gen)
    # weights 0.9^2 vs 0.1^2: rare loci chosen with probability 0.81 / 0.82
    share = (targets < 100).float().mean().item()
    assert abs(share - 0.81 / 0.82) < 0.02


def test_complete_genotypes__counts_sum_to_ploidy():
    for ploidy, n_alleles in [(1, 2), (2, 3), (4, 2), (6, 4)]:
        table = complete_genotypes(ploidy, n_alleles)
        assert (table.sum(1) == ploidy).all()
        assert len(table) == sum((allele_decoder(ploidy, n_alleles) > 0).all(1))


def test_masked_task__masks_targets_with_mask_id(population):
    task = MaskedMarkerTask(population, population.allele_frequencies(), MaskedConfig())
    masked, inputs, targets, valid, counts = task.batch(
        np.arange(4), torch.Generator().manual_seed(1)
    )
    rows = torch.arange(4)[:, None]
    assert (masked[rows, targets] == population.n_alleles + 1).all()
    original = torch.from_numpy(population.alleles[:4].astype(np.int64))
    assert (counts.sum(-1)[valid] == population.ploidy).all()
    untouched = torch.ones_like(masked[..., 0], dtype=torch.bool)
    untouched[rows, targets] = False
    assert (masked[untouched] == original[untouched]).all()


def test_pretrain__loss_falls(population, tmp_path):
    pretrain_encoder(
        population,
        tmp_path / "m",
        TINY,
        {"epochs": 25, "lr": 3e-3, "patience": 100, "seed": 0},
    )
    metrics = pd.read_csv(tmp_path / "m" / "metrics.csv")
    assert (
        metrics["train_loss"].iloc[-3:].mean()
        < metrics["train_loss"].iloc[:3].mean() - 0.05
    )
    assert metrics["val_loss"].iloc[-3:].mean() < metrics["val_loss"].iloc[:3].mean()


def test_pretrain__time_budget_stops_on_the_clock_and_anneals(population, tmp_path):
    """The run stops at the first step past the budget, with the LR annealed
    towards its floor on the clock; resuming a spent run trains no further step."""
    typed = {"epochs": 10_000, "time_budget_s": 1.5, "eval_every": 4, "patience": 10**6}
    pretrain_encoder(population, tmp_path / "m", {**TINY, "warmup_steps": 2}, typed)
    metrics = pd.read_csv(tmp_path / "m" / "metrics.csv")
    last = metrics.iloc[-1]
    # the first step past the budget ends it (generous bounds: a loaded box makes
    # steps slow, and a warm-up of 2 steps must be over)
    assert 1.5 <= last["seconds"] < 30.0 and last["step"] > 2
    # the clock, not the steps (a tiny share of 10,000 epochs), annealed the LR: at
    # least half way to its floor even when a loaded box makes the last step long
    assert last["lr"] < 0.5 * 1e-3
    pretrain_encoder(population, tmp_path / "m", {**TINY, "warmup_steps": 2}, typed)
    again = pd.read_csv(tmp_path / "m" / "metrics.csv")
    assert again["step"].iloc[-1] == last["step"]


def test_save_load__identical_outputs(population, tmp_path):
    model = pretrain_encoder(population, tmp_path / "m", TINY, {"max_steps": 3})
    loaded, config = load_masked_model(tmp_path / "m", population)
    model.eval()
    x = torch.from_numpy(population.alleles[:5].astype(np.int64))
    idx = torch.arange(population.n_markers)
    targets = torch.tensor([0, 7, 99])
    with torch.no_grad():
        assert torch.equal(model(x, idx, targets), loaded(x, idx, targets))
    assert config["format_version"] == FORMAT_VERSION and config["task"] == "masked"


def test_load_masked_model__raises_on_other_marker_map(population, tmp_path):
    pretrain_encoder(population, tmp_path / "m", TINY, {"max_steps": 1})
    other = population.subset(markers=np.arange(population.n_markers - 1))
    with pytest.raises(InputError, match="marker map differs"):
        load_masked_model(tmp_path / "m", other)


def test_impute__fills_every_missing_copy_consistently(population, tmp_path):
    model = pretrain_encoder(
        population, tmp_path / "m", TINY, {"max_steps": 5}, resume=False
    ).eval()
    result = impute(model, population, progress=False)
    filled = result.genotypes.alleles
    assert (filled > 0).all()
    observed = population.alleles > 0
    # a half-missing locus keeps its observed copy
    half = observed.any(-1) & ~observed.all(-1)
    for i, m in zip(*np.nonzero(half), strict=True):
        kept = population.alleles[i, m][population.alleles[i, m] > 0]
        assert set(kept.tolist()) <= set(filled[i, m].tolist())
    complete = observed.all(-1)
    assert (filled[complete] == population.alleles[complete]).all()
    assert np.allclose(result.probabilities.sum(1), 1, atol=1e-5)


def test_impute__divides_out_the_target_sampling_prior(population, tmp_path):
    """With frequency_scaler s the call probabilities are the raw decoder's times
    prod_copies (1 - p)^-s, renormalised over the genotypes that fit the observed
    copies: rare genotypes lose the weight that target sampling gave them."""
    model = pretrain_encoder(population, tmp_path / "m", TINY, {"max_steps": 3}).eval()
    raw = impute(model, population, progress=False)
    corrected = impute(model, population, progress=False, frequency_scaler=0.5)
    p = population.allele_frequencies()[raw.loci]  # (K, A)
    weight = np.exp(0.5 * np.log(1 - p) @ raw.complete.T)  # (K, G)
    expected = raw.probabilities / weight
    expected /= expected.sum(1, keepdims=True)
    assert np.allclose(corrected.probabilities, expected, atol=1e-4)
    common = weight.argmin(1)  # the genotype made of the most frequent alleles
    rows = np.arange(len(common))
    assert (
        corrected.probabilities[rows, common] >= raw.probabilities[rows, common] - 1e-6
    ).all()


def test_impute__learns_ld_better_than_frequency(tmp_path):
    """Hidden genotypes of a simulated population are recovered above the
    per-marker most-frequent-genotype baseline."""
    data = simulate(
        SimulationConfig(
            n_individuals=300,
            n_markers=600,
            n_chromosomes=2,
            chromosome_length_bp=10_000_000,
            missing_rate=0.0,
            seed=5,
        )
    )
    truth = data.genotypes
    rng = np.random.default_rng(0)
    hide = rng.random(truth.alleles.shape[:2]) < 0.1
    hidden = truth.alleles.copy()
    hidden[hide] = 0
    masked = Genotypes(hidden, truth.names, truth.markers, truth.n_alleles)
    model = pretrain_encoder(
        masked,
        tmp_path / "m",
        {**TINY, "width": 48, "n_latents": 16},
        {"epochs": 20, "lr": 3e-3, "patience": 100},
    ).eval()
    filled = impute(model, masked, progress=False).genotypes.alleles
    concordance = (filled[hide] == truth.alleles[hide]).all(-1).mean()
    codes = masked.codes()
    baseline = []
    for m in range(truth.n_markers):
        observed = codes[~hide[:, m], m]
        mode = np.bincount(observed).argmax()
        baseline.append(truth.codes()[hide[:, m], m] == mode)
    baseline = np.concatenate(baseline).mean()
    assert concordance > baseline + 0.05, (concordance, baseline)


RESUME_SCRIPT = (
    SLOW_STEPS
    + """
import sys
from gperceiver.io import read_chroms, read_markers
from gperceiver.pretraining import pretrain_encoder
chroms, markers, out, delay = sys.argv[1:5]
g = read_markers(markers, read_chroms(chroms))
typed = {"epochs": 4, "batch_size": 8, "checkpoint_every": 3, "eval_every": 5, "seed": 11}
slow_steps(float(delay))
pretrain_encoder(g, out, {"width": 32, "n_latents": 8, "self_layers": 1, "encode_iters": 1, "progress": False}, typed)
"""
)


def test_pretrain__killed_and_resumed_matches_uninterrupted(population, tmp_path):
    g = population.subset(individuals=np.arange(60), markers=np.arange(200))
    write_chroms(g.markers, tmp_path / "c.tsv")
    write_markers(g, tmp_path / "m.tsv")
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    args = [
        sys.executable,
        str(script),
        str(tmp_path / "c.tsv"),
        str(tmp_path / "m.tsv"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*args, str(tmp_path / "full"), "0"], check=True, env=env)
    # slowed run, killed with SIGKILL once a mid-epoch checkpoint exists
    proc = subprocess.Popen([*args, str(tmp_path / "killed"), "0.3"], env=env)
    pointer = tmp_path / "killed" / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while not pointer.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert pointer.exists() and not (tmp_path / "killed" / "model.safetensors").exists()
    subprocess.run([*args, str(tmp_path / "killed"), "0"], check=True, env=env)
    full = load_tensors(tmp_path / "full" / "model.safetensors")
    resumed = load_tensors(tmp_path / "killed" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    # the losses logged since the last evaluation were checkpointed too
    logged = [
        pd.read_csv(tmp_path / run / "metrics.csv").drop(columns="seconds")
        for run in ("full", "killed")
    ]
    pd.testing.assert_frame_equal(logged[0], logged[1])


def test_read_markers__imputed_output_round_trips(population, tmp_path):
    model = pretrain_encoder(population, tmp_path / "m", TINY, {"max_steps": 2}).eval()
    result = impute(model, population, progress=False)
    write_chroms(population.markers, tmp_path / "c.tsv")
    write_markers(result.genotypes, tmp_path / "out.tsv")
    again = read_markers(tmp_path / "out.tsv", read_chroms(tmp_path / "c.tsv"))
    assert (again.alleles == result.genotypes.alleles).all()


def test_marker_map__unplaced_chromosome_pretrains(tmp_path):
    markers, _ = MarkerMap.from_columns(
        ["unplaced"] * 30, [f"m{i}" for i in range(30)], np.arange(30)
    )
    rng = np.random.default_rng(0)
    alleles = np.sort(rng.integers(1, 3, size=(20, 30, 2)), -1).astype(np.uint8)
    g = Genotypes(alleles, np.array([f"i{i}" for i in range(20)]), markers, 2)
    pretrain_encoder(g, tmp_path / "m", TINY, {"max_steps": 2})
    assert (tmp_path / "m" / "model.safetensors").exists()
