"""The relatives head (in-context prediction, issue 22): leakage rules, order
invariance, its RKHS starting point against a closed form written here with
numpy, and forward/backward on diploid and tetraploid genotypes with missing
calls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gperceiver.baselines import RKHS, Kernel
from gperceiver.data import MISSING, Genotypes, MarkerMap
from gperceiver.evaluate.methods import METHODS
from gperceiver.incontext import (
    RelativesSettings,
    fit_relatives,
    head_predict,
    marker_windows,
    window_distances,
)
from gperceiver.nn.relatives import RelativesHead, RelativesStart


def _genotypes(n=40, m=60, ploidy=2, missing=0.05, seed=0) -> Genotypes:
    """Random biallelic genotypes on two chromosomes, some copies uncalled."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.1, 0.9, m)
    alleles = 1 + (rng.random((n, m, ploidy)) < p[None, :, None])
    alleles[rng.random((n, m, ploidy)) < missing] = MISSING
    alleles = np.sort(alleles, axis=-1).astype(np.uint8)
    chrom = np.repeat(["1", "2"], [m // 2, m - m // 2])
    markers, _ = MarkerMap.from_columns(chrom, [f"m{i}" for i in range(m)], range(m))
    return Genotypes(alleles, np.array([f"i{k}" for k in range(n)]), markers, 2)


def _trained_head(n_windows: int, seed=1) -> RelativesHead:
    """A head moved away from its start (window weights, attention on)."""
    head = RelativesHead(n_windows, RelativesStart(1.0, 0.5, 0.2, 1.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
        head.gamma.fill_(0.7)
    return head


def test_marker_windows__stay_within_chromosomes():
    windows = marker_windows(_genotypes(m=60), 16)
    assert [len(w) for w in windows] == [15, 15, 15, 15]
    assert np.array_equal(np.concatenate(windows), np.arange(60))


def test_relatives_head__training_individual_never_reads_its_own_response():
    genotypes = _genotypes()
    d2, median = window_distances(genotypes, 16)
    head = _trained_head(len(d2))
    context = np.arange(5, 35)
    y = np.random.default_rng(2).standard_normal(len(context))
    with torch.no_grad():
        base = head_predict(head, d2, context, y, context).numpy()
        for i in (0, 7, 29):
            moved = y.copy()
            moved[i] += 50.0
            again = head_predict(head, d2, context, moved, context).numpy()
            np.testing.assert_allclose(again[i], base[i], rtol=0, atol=1e-8)
            others = np.delete(np.arange(len(context)), i)
            assert np.abs(again[others] - base[others]).max() > 1e-3


def test_relatives_head__output_invariant_to_context_order():
    genotypes = _genotypes()
    d2, _ = window_distances(genotypes, 16)
    head = _trained_head(len(d2))
    context, queries = np.arange(30), np.arange(30, 40)
    y = np.random.default_rng(3).standard_normal(30)
    order = np.random.default_rng(4).permutation(30)
    with torch.no_grad():
        base = head_predict(head, d2, context, y, queries).numpy()
        shuffled = head_predict(head, d2, context[order], y[order], queries).numpy()
        loo = head_predict(head, d2, context, y, context[:5]).numpy()
        loo_shuffled = head_predict(head, d2, context[order], y[order], context[:5])
    np.testing.assert_allclose(shuffled, base, rtol=0, atol=1e-10)
    np.testing.assert_allclose(loo_shuffled.numpy(), loo, rtol=0, atol=1e-10)


def _numpy_kernel_regression(genotypes, context, y, queries, h, delta, mu):
    """Gaussian-kernel regression over mean-imputed centred dosages, from
    scratch: the predictor of RKHS with fixed h, delta and intercept."""
    alleles = genotypes.alleles.astype(int)
    called = (alleles != MISSING).sum(-1)
    second = (alleles == 2).sum(-1).astype(float)  # copies of allele 2
    p = second.sum(0) / called.sum(0)  # (M,) frequency among called copies
    dosage = second + (genotypes.ploidy - called) * p  # mean imputation
    # two allele columns per marker, each variance P p (1 - p), same distance
    d2 = 2 * ((dosage[:, None] - dosage[None]) ** 2).sum(-1)
    d2 /= 2 * (genotypes.ploidy * p * (1 - p)).sum()
    median = np.median(d2[np.triu_indices(len(d2), 1)])
    kernel = np.exp(-d2 / (h * median))
    k_cc = kernel[np.ix_(context, context)] + delta * np.eye(len(context))
    fresh = mu + kernel[np.ix_(queries, context)] @ np.linalg.solve(k_cc, y - mu)
    loo = np.empty(len(context))  # refit without each context individual
    for i in range(len(context)):
        keep = np.delete(np.arange(len(context)), i)
        sub = k_cc[np.ix_(keep, keep)]
        loo[i] = mu + k_cc[i, keep] @ np.linalg.solve(sub, y[keep] - mu)
    return fresh, loo, median


@pytest.mark.parametrize("ploidy", [2, 4])
def test_relatives_head__start_equals_closed_form_kernel_regression(ploidy):
    genotypes = _genotypes(n=36, m=50, ploidy=ploidy)
    d2, median = window_distances(genotypes, 16)
    context, queries = np.arange(28), np.arange(28, 36)
    y = np.random.default_rng(5).standard_normal(28)
    h, delta, mu = 0.7, 0.4, 0.3
    fresh, loo, expected_median = _numpy_kernel_regression(
        genotypes, context, y, queries, h, delta, mu
    )
    # dosages are float32 in Genotypes.dosages: agreement to ~1e-7
    assert median == pytest.approx(expected_median, rel=1e-6)
    head = RelativesHead(len(d2), RelativesStart(h, delta, mu, median))
    with torch.no_grad():
        got = head_predict(head, d2, context, y, queries).numpy()
        got_loo = head_predict(head, d2, context, y, context).numpy()
    np.testing.assert_allclose(got, fresh, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_loo, loo, rtol=0, atol=1e-6)


def test_fit_relatives__untrained_is_the_rkhs_baseline():
    genotypes = _genotypes(n=50, m=60)
    d2, median = window_distances(genotypes, 16)
    relationship = Kernel.relationship(genotypes)
    y = np.random.default_rng(6).standard_normal(40)
    settings = RelativesSettings(window=16, steps=0)
    head, log = fit_relatives(d2, median, relationship, np.arange(40), y, settings)
    assert log["best_step"] == 0
    records = pd.DataFrame({"name": genotypes.names[:40], "response": y})
    expected = RKHS(relationship).fit(records, None).predict(genotypes.names[40:])
    with torch.no_grad():
        got = head_predict(head, d2, np.arange(40), y, np.arange(40, 50)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8)


def _records(genotypes, seed=7):
    rng = np.random.default_rng(seed)
    n = genotypes.n_individuals
    frame = pd.DataFrame(
        {
            "name": np.tile(genotypes.names, 2),
            "response": rng.standard_normal(2 * n),
            "block": np.repeat([0, 1], n),
            "cv": np.tile(np.arange(n) % 5, 2).astype(str),
        }
    )
    return frame[frame["cv"] != "0"], frame[frame["cv"] == "0"]


def test_relatives_method__validation_phenotypes_never_enter():
    genotypes = _genotypes(n=50, m=60)
    train, validation = _records(genotypes)
    options = {"params": {"relatives": {"window": 16, "steps": 4, "lr": 0.1}}}
    method = METHODS["relatives"]
    base = method(train, validation, genotypes, dict(options))
    moved = validation.assign(response=validation["response"] * -30 + 5)
    again = method(train, moved, genotypes, dict(options))
    np.testing.assert_array_equal(again, base)
    assert np.isfinite(base).all() and base.shape == (len(validation),)


@pytest.mark.parametrize("ploidy", [2, 4])
def test_relatives_head__forward_backward_with_missing_calls(ploidy):
    genotypes = _genotypes(n=30, m=40, ploidy=ploidy, missing=0.2)
    d2, median = window_distances(genotypes, 8)
    assert np.isfinite(d2).all() and d2.shape == (6, 30, 30)
    head = RelativesHead(len(d2), RelativesStart(1.0, 0.5, 0.0, median))
    with torch.no_grad():
        head.gamma.fill_(0.5)  # at 0 the attention's other gradients vanish
    y = torch.randn(25, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    context = np.arange(25)
    loo = head_predict(head, d2, context, y.numpy(), context)
    fresh = head_predict(head, d2, context, y.numpy(), np.arange(25, 30))
    ((loo - y) ** 2).mean().add(fresh.square().mean()).backward()
    for name, parameter in head.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
