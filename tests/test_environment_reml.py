"""REML of main-effect and reaction-norm GBLUP in the individuals' space, against
the records-space computation (tests/reml_helpers.py) on incomplete designs."""

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from gperceiver.baselines import Kernel, ReactionNorm
from gperceiver.baselines.environment_reml import (
    InteractionREML,
    RecordFactor,
    interaction_reml,
    main_effect_profile,
    main_effect_reml,
    orthonormal_basis,
)
from gperceiver.data import EnvCovariates
from gperceiver.evaluate import METHODS
from reml_helpers import dense_design, dense_log_likelihood, dense_objective


def incomplete_trial(n=40, m=5, per=24, gxe=1.0, seed=0):
    """Records of ``per`` random individuals in each of ``m`` environments (the
    last one has a single record), with main effects, a weather-like interaction
    of rank 2 and environment means. Returns ``(y, g, individuals, envs, omega,
    covariates (m, 2))``."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, 300))
    w -= w.mean(0)
    g = w @ w.T / 300
    covariates = rng.normal(size=(m, 2))
    omega = covariates @ covariates.T / 2
    root = np.linalg.cholesky(g + 1e-8 * np.eye(n))
    main, slopes = root @ rng.normal(size=n), root @ rng.normal(size=(n, 2))
    genetic = main[:, None] + gxe * slopes @ covariates.T / np.sqrt(2)  # (n, m)
    individuals, envs = [], []
    for j in range(m):
        chosen = rng.choice(n, 1 if j == m - 1 else per, replace=False)
        individuals += chosen.tolist()
        envs += [j] * len(chosen)
    individuals, envs = np.array(individuals), np.array(envs)
    y = genetic[individuals, envs] + rng.normal(size=len(envs)) + 2.0 * envs
    return y, g, individuals, envs, omega, covariates


def tight_dense_optimum(y, g, individuals, envs, omega, extra=None):
    """The records-space likelihood's maximum, found to 1e-9 from several starts."""
    objective = dense_objective(y, g, individuals, envs, omega, extra)[0]
    best = None
    for start in ([0.0, 0.0], [0.0, -2.0], [-2.0, 0.0], [1.0, 1.0]):
        result = optimize.minimize(
            objective,
            start,
            method="Nelder-Mead",
            options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000},
        )
        if best is None or result.fun < best.fun:
            best = result
    return best.x, -best.fun - 0.5 * (len(y) - dense_design(envs, extra).shape[1])


def test_record_factor__reproduces_the_records_kernel_with_replicates():
    y, g, individuals, envs, *_ = incomplete_trial()
    individuals = np.concatenate([individuals, individuals[:7]])  # replicates
    factor = RecordFactor.build(g, individuals)
    f = factor.records()
    assert np.allclose(f @ f.T, g[np.ix_(individuals, individuals)], atol=1e-10)
    assert np.allclose(f.T @ f, np.diag(factor.values), atol=1e-10)
    v = np.random.default_rng(1).normal(size=(len(individuals), 3))
    assert np.allclose(factor.transpose_times(v), f.T @ v)


@pytest.mark.parametrize(
    "log_ratios", [(0.0, 0.0), (-1.5, 0.7), (2.0, -4.0), (-6.0, 3.0)]
)
def test_interaction_likelihood__equals_the_records_space_likelihood(log_ratios):
    y, g, individuals, envs, omega, _ = incomplete_trial()
    model = InteractionREML(y, g, individuals, envs, omega, dense_design(envs))
    ours = model.log_likelihood(*log_ratios)
    dense = dense_log_likelihood(y, g, individuals, envs, omega, log_ratios)
    assert ours == pytest.approx(dense, rel=1e-10)


def test_main_effect_likelihood__equals_the_records_space_likelihood_rank_deficient_x():
    y, g, individuals, envs, *_ = incomplete_trial(seed=2)
    # an extra fixed column that is the sum of two environments' indicators: X has
    # one column more than its rank
    extra = (envs < 2).astype(float)[:, None]
    x = dense_design(envs, extra)
    assert orthonormal_basis(x).shape[1] == x.shape[1] - 1
    profile = main_effect_profile(
        RecordFactor.build(g, individuals), orthonormal_basis(x), y
    )
    for log_tau in (-3.0, 0.2, 4.0):
        dense = dense_log_likelihood(
            y, g, individuals, envs, None, (log_tau, -np.inf), extra
        )
        assert profile.log_likelihood(log_tau)[0] == pytest.approx(dense, rel=1e-10)


@pytest.mark.parametrize("gxe", [1.0, 0.0])
def test_interaction_reml__finds_the_records_space_optimum(gxe):
    y, g, individuals, envs, omega, _ = incomplete_trial(gxe=gxe, seed=3)
    s2g, s2ge, s2e, loglik, weights = interaction_reml(
        y, g, individuals, envs, omega, dense_design(envs)
    )
    log_ratios, best = tight_dense_optimum(y, g, individuals, envs, omega)
    assert loglik == pytest.approx(best, abs=1e-6)
    assert loglik <= best + 1e-8  # the same function: never above its maximum
    tau = np.exp(log_ratios)
    assert s2g / s2e == pytest.approx(tau[0], rel=1e-3)
    if gxe:
        assert s2ge / s2e == pytest.approx(tau[1], rel=1e-3)
    else:
        assert s2ge / s2e < 0.05
    h = (
        np.eye(len(y))
        + tau[0] * g[np.ix_(individuals, individuals)]
        + tau[1] * g[np.ix_(individuals, individuals)] * omega[np.ix_(envs, envs)]
    )
    x = dense_design(envs)
    hx = np.linalg.solve(h, x)
    beta = np.linalg.solve(x.T @ hx, hx.T @ y)
    residual = np.linalg.solve(h, y - x @ beta)  # V^-1 (y - X b) s2e
    m = len(y) - x.shape[1]
    assert s2e == pytest.approx((y - x @ beta) @ residual / m, rel=1e-3)
    assert np.allclose(weights * s2e, residual, atol=1e-3 * np.abs(residual).max())


def test_main_effect_reml__finds_the_records_space_optimum():
    y, g, individuals, envs, *_ = incomplete_trial(seed=4)
    s2g, _, s2e, loglik, _ = main_effect_reml(y, g, individuals, dense_design(envs))
    objective = dense_objective(y, g, individuals, envs, None)[0]
    result = optimize.minimize_scalar(
        lambda v: objective(np.array([v, -np.inf])),
        bounds=(-10, 10),
        method="bounded",
        options={"xatol": 1e-9},
    )
    assert np.log(s2g / s2e) == pytest.approx(result.x, abs=1e-4)
    assert loglik == pytest.approx(-result.fun - 0.5 * (len(y) - 5), abs=1e-8)


def trial_records(seed=5):
    y, g, individuals, envs, omega, covariates = incomplete_trial(seed=seed)
    names = np.array([f"i{k}" for k in range(len(g))])
    records = pd.DataFrame(
        {"name": names[individuals], "response": y, "block": envs, "cv": "0"}
    )
    values = covariates[:, None, :]  # static covariates (E, 1, 2)
    env_covariates = EnvCovariates(np.arange(len(covariates)), ["a", "b"], values)
    return records, Kernel(g, names), g, omega, env_covariates


def test_reaction_norm__held_out_environment_predicted_from_the_reference_fit():
    """The BLUP of g + ge in an environment without records, from the fit on the
    others: ``s2g G_kr w + s2ge (G_kr o Omega_hr) w`` with the weights of the
    records-space optimum."""
    records, kernel, g, omega, _ = trial_records()
    held = records["block"] == 2
    train, test = records[~held], records[held]
    model = ReactionNorm(kernel, omega, np.arange(5)).fit(train, None)
    individuals = kernel.index_of(train["name"])
    envs = train["block"].to_numpy()
    env_ids, env_of = np.unique(envs, return_inverse=True)
    omega_train = omega[np.ix_(env_ids, env_ids)]
    log_ratios, _ = tight_dense_optimum(
        train["response"].to_numpy(), g, individuals, env_of, omega_train
    )
    tau = np.exp(log_ratios)
    g_rr = g[np.ix_(individuals, individuals)]
    h = (
        np.eye(len(train))
        + tau[0] * g_rr
        + tau[1] * g_rr * omega_train[env_of][:, env_of]
    )
    x = dense_design(env_of)
    y = train["response"].to_numpy()
    beta = np.linalg.solve(x.T @ np.linalg.solve(h, x), x.T @ np.linalg.solve(h, y))
    hw = np.linalg.solve(h, y - x @ beta)  # s2e V^-1 (y - X b)
    rows = kernel.index_of(test["name"])
    reference = g[np.ix_(rows, individuals)] @ (
        tau[0] * hw + tau[1] * hw * omega[2, envs]
    )
    genetic = model.predict_parts(test)[1]
    assert np.allclose(genetic, reference, atol=1e-3 * np.abs(reference).max())
    assert pd.Series(genetic).corr(pd.Series(reference)) > 0.9999


def test_gblup_rn_cv0__held_out_records_unused_and_covariates_used():
    records, kernel, _, _, env_covariates = trial_records(seed=6)
    held = (records["block"] == 1).to_numpy()
    train, validation = records[~held], records[held]
    cache = {"covariates": env_covariates, "relationship": kernel}
    fixed, genetic = METHODS["gblup-rn"](train, validation, None, dict(cache))
    # other responses in the held-out environment: the same predictions
    changed = validation.assign(response=validation["response"] * -3.0 + 100.0)
    again = METHODS["gblup-rn"](train, changed, None, dict(cache))
    assert np.array_equal(genetic, again[1]) and np.array_equal(fixed, again[0])
    # other covariates of the held-out environment: other predictions
    values = env_covariates.values.copy()
    values[1] += 2.0
    moved = EnvCovariates(env_covariates.environments, env_covariates.names, values)
    other = METHODS["gblup-rn"](train, validation, None, {**cache, "covariates": moved})
    assert not np.allclose(genetic, other[1])
