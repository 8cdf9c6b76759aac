"""The prior-fitted relatives network (issue 22): its start is REML RKHS, its
predictions ignore query responses and validation phenotypes, are invariant to
the order of the context individuals and of the windows, survive a weights
round trip bit for bit, and the shipped weights beat the context mean on a
freshly simulated additive population."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gperceiver.baselines import RKHS, Kernel
from gperceiver.evaluate.methods import METHODS
from gperceiver.incontext import window_distances
from gperceiver.incontext_prior import (
    _loss,
    _train_steps,
    load_prior,
    make_episode,
    population_episodes,
    predict,
    save_prior,
)
from gperceiver.nn.relatives_prior import PriorRelativesNet
from gperceiver.simulate import SimulationConfig, simulate


def _population(n=80, m=120, seed=3, **traits):
    traits = {"n_qtl": 20, **traits}
    config = SimulationConfig(
        n_individuals=n, n_markers=m, n_chromosomes=2, n_environments=2,
        n_folds=5, seed=seed, **traits,
    )  # fmt: skip
    data = simulate(config)
    d2, median = window_distances(data.genotypes, 16)
    return data, d2, median, Kernel.relationship(data.genotypes)


def _moved(net: PriorRelativesNet, seed=0) -> PriorRelativesNet:
    """A network pushed away from its zero-output start."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator,
                                             dtype=parameter.dtype))  # fmt: skip
    return net


def _responses(data, block=0):
    table = data.phenotypes.table
    return table[table["block"] == block]["response"].to_numpy()


def test_prior_net__untrained_is_reml_rkhs():
    data, d2, median, relationship = _population()
    y = _responses(data)
    context, queries = np.arange(60), np.arange(60, 80)
    episode, (centre, sd) = make_episode(
        d2, median, relationship, context, queries, y[context]
    )
    with torch.no_grad():
        got = centre + sd * predict(PriorRelativesNet(8), episode).numpy()
    records = {"name": data.genotypes.names[context], "response": y[context]}
    import pandas as pd

    expected = RKHS(relationship).fit(pd.DataFrame(records), None)
    np.testing.assert_allclose(
        got, expected.predict(data.genotypes.names[queries]), rtol=0, atol=1e-6
    )


def test_prior_net__invariant_to_context_and_window_order():
    data, d2, median, relationship = _population()
    y = _responses(data)
    net = _moved(PriorRelativesNet(8))
    context, queries = np.arange(60), np.arange(60, 80)
    order = np.random.default_rng(1).permutation(60)
    windows = np.random.default_rng(2).permutation(len(d2))
    episodes = [
        make_episode(d2, median, relationship, context, queries, y[context])[0],
        make_episode(
            d2, median, relationship, context[order], queries, y[context][order]
        )[0],  # fmt: skip
        make_episode(d2[windows], median, relationship, context, queries, y[context])[
            0
        ],  # fmt: skip
    ]
    with torch.no_grad():
        base, *others = [predict(net, e).numpy() for e in episodes]
    assert np.abs(base).max() > 1e-3
    for other in others:
        np.testing.assert_allclose(other, base, rtol=0, atol=1e-9)


def test_prior_net__query_responses_never_read():
    data, d2, median, relationship = _population()
    y = _responses(data)
    net = _moved(PriorRelativesNet(8))
    context, queries = np.arange(60), np.arange(60, 80)
    one, _ = make_episode(d2, median, relationship, context, queries, y[context],
                          y[queries])  # fmt: skip
    two, _ = make_episode(d2, median, relationship, context, queries, y[context],
                          -40 * y[queries] + 3)  # fmt: skip
    with torch.no_grad():
        np.testing.assert_array_equal(predict(net, one), predict(net, two))
    moved = y[context].copy()
    moved[5] += 3.0  # a context response does move the predictions
    three, _ = make_episode(d2, median, relationship, context, queries, moved)
    with torch.no_grad():
        assert (predict(net, three) - predict(net, one)).abs().max() > 1e-4


def test_relatives_prior_method__validation_phenotypes_never_enter(tmp_path):
    data, _, _, _ = _population()
    save_prior(_moved(PriorRelativesNet(8)), tmp_path / "net", {})
    table = data.phenotypes.table
    train, validation = table[table["cv"] != "0"], table[table["cv"] == "0"]
    options = {"relatives_prior_path": tmp_path / "net"}
    method = METHODS["relatives-prior"]
    base = method(train, validation, data.genotypes, dict(options))
    moved = validation.assign(response=validation["response"] * -30 + 5)
    again = method(train, moved, data.genotypes, dict(options))
    np.testing.assert_array_equal(again, base)
    assert np.isfinite(base).all() and base.shape == (len(validation),)


def test_prior_weights__round_trip_is_bit_identical(tmp_path):
    data, d2, median, relationship = _population()
    y = _responses(data)
    net = _moved(PriorRelativesNet(8))
    episode, _ = make_episode(d2, median, relationship, np.arange(60),
                              np.arange(60, 80), y[:60])  # fmt: skip
    save_prior(net, tmp_path / "net", {"made_by": "test"})
    again = load_prior(tmp_path / "net")
    with torch.no_grad():
        assert torch.equal(predict(net, episode), predict(again, episode))
    info = (tmp_path / "net.json").read_text()
    assert '"format_version": 1' in info and '"made_by": "test"' in info


def test_prior_weights__wrong_format_version_is_refused(tmp_path):
    save_prior(PriorRelativesNet(4), tmp_path / "net", {})
    text = (tmp_path / "net.json").read_text()
    (tmp_path / "net.json").write_text(
        text.replace('"format_version": 1', '"format_version": 99')
    )
    with pytest.raises(ValueError, match="format_version 99"):
        load_prior(tmp_path / "net")


def test_shipped_prior__beats_the_mean_on_a_fresh_additive_population():
    """Zero-shot on a population none of the training seeds drew: correlation
    with the true genetic value well above 0 and query error below the
    context mean's (the standardised variance, ~1)."""
    data, d2, median, relationship = _population(
        n=300, m=400, seed=12345, n_qtl=30, dominance_variance=0.0,
        epistasis_variance=0.0, heritability=0.6,
    )  # fmt: skip
    net = load_prior()
    y = _responses(data)
    genetic = data.truth[data.truth["block"] == 0]["genetic"].to_numpy()
    context, queries = np.arange(240), np.arange(240, 300)
    episode, _ = make_episode(d2, median, relationship, context, queries,
                              y[context], y[queries])  # fmt: skip
    with torch.no_grad():
        prediction = predict(net, episode).numpy()
    mean_error = float((episode.target**2).mean())
    error = float(((prediction - episode.target.numpy()) ** 2).mean())
    assert error < 0.9 * mean_error
    assert np.corrcoef(prediction, genetic[queries])[0, 1] > 0.4


def test_population_episodes__are_seeded_and_split_context_from_queries():
    one, two = population_episodes(7, 64), population_episodes(7, 64)
    assert len(one) >= 2
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a.y, b.y) and torch.equal(a.target, b.target)
        c, q = len(a.y), len(a.target)
        assert a.d2_cc.shape[1:] == (c, c) and a.d2_qc.shape[1:] == (q, c)
        assert 0.1 <= q / (q + c) <= 0.3


def test_train_prior__steps_lower_the_query_loss_from_reml_rkhs():
    """A few Adam steps on one simulated population's episodes move the
    network off its REML RKHS start to a lower query loss (gradients reach
    every layer through the Cholesky solve)."""
    episodes = population_episodes(3, 64)
    torch.manual_seed(0)
    net = PriorRelativesNet(8)
    start = _loss(net, episodes)
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(25):
        _train_steps(net, optimiser, episodes, together=True)
    assert _loss(net, episodes) < start - 0.005
    assert net.window_out.weight.abs().sum() > 0


def test_relatives_prior_tuned__validation_phenotypes_never_enter(tmp_path):
    data, _, _, _ = _population()
    save_prior(_moved(PriorRelativesNet(8)), tmp_path / "net", {})
    table = data.phenotypes.table
    train, validation = table[table["cv"] != "1"], table[table["cv"] == "1"]
    options = {"relatives_prior_path": tmp_path / "net", "params": {"seed": 2}}
    method = METHODS["relatives-prior-tuned"]
    base = method(train, validation, data.genotypes, dict(options))
    moved = validation.assign(response=validation["response"] * 7 - 2)
    again = method(train, moved, data.genotypes, dict(options))
    np.testing.assert_array_equal(again, base)
    zero_shot = METHODS["relatives-prior"](train, validation, data.genotypes,
                                           dict(options))  # fmt: skip
    assert np.isfinite(base).all() and base.shape == zero_shot.shape
