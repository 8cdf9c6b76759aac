"""The composite-likelihood fit of reaction-norm GBLUP for many records: its
likelihood is the exact one of the model without relationships across groups, its
BLUP solve the records-space GLS, and its estimates close to exact REML's."""

import numpy as np
import pytest

from gperceiver.baselines import ReactionNorm, environment_composite
from gperceiver.baselines.environment_composite import (
    CompositeREML,
    blup_weights,
    composite_reml,
    record_groups,
)
from gperceiver.baselines.environment_reml import InteractionREML, interaction_reml
from gperceiver.evaluate import METHODS
from gperceiver.io import InputError
from reml_helpers import dense_design, dense_log_likelihood
from test_environment_reml import incomplete_trial, trial_records


def test_record_groups__whole_individuals_and_about_equal_records():
    _, _, individuals, *_ = incomplete_trial(n=40, m=5, per=30)
    groups = record_groups(individuals, 40)
    assert len(groups) == int(np.ceil(len(individuals) / 40))
    every = np.sort(np.concatenate(groups))
    assert np.array_equal(every, np.arange(len(individuals)))
    owners = [set(individuals[r].tolist()) for r in groups]
    for a in range(len(owners)):
        for b in range(a + 1, len(owners)):
            assert not owners[a] & owners[b]  # an individual in one group only
    most = np.bincount(individuals).max()  # records of the busiest individual
    target = len(individuals) / len(groups)
    assert all(abs(len(r) - target) <= most for r in groups)


@pytest.mark.parametrize("log_ratios", [(0.0, 0.0), (-1.5, 0.7), (2.0, -3.0)])
def test_composite_likelihood__is_the_exact_likelihood_without_cross_group_relationships(
    log_ratios,
):
    """``l_c`` = the records-space REML likelihood of ``G`` with the relationships
    across groups set to zero and the environment means nested in the groups."""
    y, g, individuals, envs, omega, _ = incomplete_trial(n=40, m=5, per=24, seed=7)
    model = CompositeREML(y, g, individuals, envs, omega, dense_design(envs), 35)
    assert len(model.groups) == 3
    label = np.empty(len(y), dtype=np.int64)
    for number, rows in enumerate(model.groups):
        label[rows] = number
    group_of = np.full(len(g), -1)
    group_of[individuals] = label
    g_blocks = g * (group_of[:, None] == group_of[None, :])
    nested = dense_design(label * omega.shape[0] + envs)  # group x environment means
    dense = dense_log_likelihood(
        y, g_blocks, individuals, envs, omega, log_ratios, nested
    )
    assert model.log_likelihood(*log_ratios) == pytest.approx(dense, rel=1e-10)


def test_blup_weights__equal_the_records_space_gls_residual_with_replicates():
    y, g, individuals, envs, omega, _ = incomplete_trial(seed=8)
    # replicates: five records again in their own environment, with other values
    individuals = np.concatenate([individuals, individuals[:5]])
    envs = np.concatenate([envs, envs[:5]])
    y = np.concatenate([y, y[:5] + 0.3])
    extra = np.linspace(-1, 1, len(y))[:, None]  # a numeric fixed effect
    x = dense_design(envs, extra)
    s2g, s2ge, s2e = 0.7, 0.4, 1.3
    weights = blup_weights(y, g, individuals, envs, omega, x, s2g, s2ge, s2e)
    g_rr = g[np.ix_(individuals, individuals)]
    v = s2e * np.eye(len(y)) + s2g * g_rr + s2ge * g_rr * omega[np.ix_(envs, envs)]
    vx = np.linalg.solve(v, x)
    beta = np.linalg.solve(x.T @ vx, vx.T @ y)
    reference = np.linalg.solve(v, y - x @ beta)
    assert np.allclose(weights, reference, rtol=0, atol=1e-7 * np.abs(reference).max())


def test_blup_weights__dense_solve_when_conjugate_gradients_stop(monkeypatch):
    y, g, individuals, envs, omega, _ = incomplete_trial(seed=13)
    x = dense_design(envs)
    iterative = blup_weights(y, g, individuals, envs, omega, x, 0.7, 0.4, 1.3)
    monkeypatch.setattr(environment_composite, "CG_MAX_ITERATIONS", 1)
    dense = blup_weights(y, g, individuals, envs, omega, x, 0.7, 0.4, 1.3)
    assert np.allclose(dense, iterative, rtol=0, atol=1e-7 * np.abs(dense).max())


def test_composite_reml__one_group_is_exact_reml():
    y, g, individuals, envs, omega, _ = incomplete_trial(seed=9)
    x = dense_design(envs)
    exact = interaction_reml(y, g, individuals, envs, omega, x)
    one = composite_reml(y, g, individuals, envs, omega, x, len(y))
    assert np.allclose(one[:4], exact[:4], rtol=1e-10)
    assert np.allclose(one[4], exact[4], rtol=0, atol=1e-7 * np.abs(exact[4]).max())


def test_composite_reml__inside_the_exact_likelihoods_95_percent_region():
    """With 4 groups the estimates differ from exact REML's but their exact
    likelihood is within 3.0 (chi2_2(0.95) / 2) of its maximum, and the BLUP of
    a held-out environment correlates >= 0.99 with the exact one."""
    y, g, individuals, envs, omega, _ = incomplete_trial(
        n=150, m=6, per=70, gxe=0.8, seed=10
    )
    x = dense_design(envs)
    exact = interaction_reml(y, g, individuals, envs, omega, x)
    approx = composite_reml(y, g, individuals, envs, omega, x, 90)
    assert len(record_groups(individuals, 90)) == 4
    assert not np.allclose(approx[:3], exact[:3], rtol=1e-3)
    model = InteractionREML(y, g, individuals, envs, omega, x)
    at_approx = model.log_likelihood(*np.log(np.array(approx[:2]) / approx[2]))
    assert exact[3] - 3.0 < at_approx <= exact[3] + 1e-8

    def held_out_blup(fit):  # g + ge of every individual in environment 0
        s2g, s2ge, weights = fit[0], fit[1], fit[4]
        return g[:, individuals] @ (s2g * weights + s2ge * weights * omega[0, envs])

    r = np.corrcoef(held_out_blup(approx), held_out_blup(exact))[0, 1]
    assert r >= 0.99


def test_reaction_norm__group_option_routes_and_null_is_exact():
    records, kernel, _, omega, env_covariates = trial_records(seed=11)
    exact = ReactionNorm(kernel, omega, np.arange(5)).fit(records, None)
    none = ReactionNorm(kernel, omega, np.arange(5), reml_group_records=None)
    assert none.fit(records, None).s2ge_ == exact.s2ge_
    grouped = ReactionNorm(kernel, omega, np.arange(5), reml_group_records=40)
    assert grouped.fit(records, None).s2ge_ != pytest.approx(exact.s2ge_, rel=1e-6)


def test_gblup_rn__params_reml_group_records_reaches_the_fit():
    records, kernel, _, _, env_covariates = trial_records(seed=12)
    train, validation = records[records["block"] != 1], records[records["block"] == 1]
    cache = {"covariates": env_covariates, "relationship": kernel}

    def genetic(params, validation=validation):
        parts = METHODS["gblup-rn"](train, validation, None, {**cache, **params})
        return parts[1]

    default = genetic({})  # fewer records than GROUP_RECORDS: exact
    assert np.array_equal(genetic({"params": {"reml_group_records": None}}), default)
    grouped = genetic({"params": {"reml_group_records": 30}})
    assert not np.allclose(grouped, default)
    assert np.corrcoef(grouped, default)[0, 1] > 0.95
    # the held-out environment's responses never enter the composite fit
    changed = validation.assign(response=validation["response"] * -3.0 + 100.0)
    params = {"params": {"reml_group_records": 30}}
    assert np.array_equal(genetic(params, changed), grouped)
    with pytest.raises(InputError, match="reml_group_records"):
        genetic({"params": {"reml_group_records": -1}})
