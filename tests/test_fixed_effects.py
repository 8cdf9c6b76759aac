"""Fixed effects in the mixed model (GLS inside REML), checked against Henderson's
mixed-model equations solved directly, a textbook REML likelihood maximised
numerically and simulated truth."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import linalg, optimize

from gperceiver.baselines import (
    GBLUP,
    FixedDesign,
    FixedEffects,
    Kernel,
    ReactionNorm,
    fixed_effect_covariance,
    genomic_relationship,
    reml,
)
from gperceiver.cli import main
from gperceiver.data import Phenotypes
from gperceiver.evaluate import cross_validate
from gperceiver.io import InputWarning, write_chroms, write_markers, write_phenotypes
from test_baselines import random_genotypes

SEX_HERD_AGE = FixedEffects(("sex", "herd"), ("age",))


def animal_problem(seed=0, n=80, m=300, records_per=2, sex_effect=2.0):
    """Individuals with a sex, a herd (3 levels) and an age per record; ``y = 10 +
    sex_effect * male + herd effect + 0.3 age + g + e``, ``s2g = s2e = 1``.

    Returns VanRaden's G of random genotypes plus ``0.05 I`` as a kernel (positive
    definite, so that ``K^-1`` exists for Henderson's equations), the genotypes,
    the records and the true genetic values."""
    rng = np.random.default_rng(seed)
    genotypes = random_genotypes(rng, n, m)
    k = genomic_relationship(genotypes) + 0.05 * np.eye(n)
    names = genotypes.names
    g = rng.multivariate_normal(np.zeros(n), k)
    sex = rng.choice(["F", "M"], size=n)
    herd = rng.choice(["h1", "h2", "h3"], size=n)
    ind = np.repeat(np.arange(n), records_per)
    age = rng.uniform(1, 5, size=len(ind))
    herd_effect = {"h1": 0.0, "h2": -1.0, "h3": 1.5}
    y = (
        10.0
        + sex_effect * (sex[ind] == "M")
        + np.array([herd_effect[h] for h in herd[ind]])
        + 0.3 * age
        + g[ind]
        + rng.normal(size=len(ind))
    )
    records = pd.DataFrame(
        {"name": names[ind], "response": y, "block": 0, "sex": sex[ind],
         "herd": herd[ind], "age": age}
    )  # fmt: skip
    return Kernel(k, names), records, g, genotypes


def henderson(k, x, z, y, delta):
    """Solve ``[X'X X'Z; Z'X Z'Z + delta K^-1] [b; u] = [X'y; Z'y]`` directly;
    returns ``b, u`` and the inverse of the coefficient matrix."""
    p = x.shape[1]
    lhs = np.block([[x.T @ x, x.T @ z], [z.T @ x, z.T @ z + delta * np.linalg.inv(k)]])
    rhs = np.concatenate([x.T @ y, z.T @ y])
    solution = np.linalg.solve(lhs, rhs)
    return solution[:p], solution[p:], np.linalg.inv(lhs)


def test_gblup_fixed__equals_henderson_mixed_model_equations():
    kernel, records, *_ = animal_problem()
    model = GBLUP(kernel, fixed=SEX_HERD_AGE).fit(records, None)
    x = model.covariates_
    assert x.shape == (len(records), 5)  # intercept, sex=M, herd=h2, herd=h3, age
    z = np.zeros((len(records), len(kernel.names)))
    z[np.arange(len(records)), model.individuals_] = 1.0
    y = records["response"].to_numpy()
    b, u, inverse = henderson(kernel.matrix, x, z, y, model.fit_.delta)
    assert np.allclose(model.fit_.beta, b, atol=1e-7)
    assert np.allclose(model.fit_.blup, u, atol=1e-7)
    fixed, genetic = model.predict_parts(records)
    assert np.allclose(fixed, x @ b) and np.allclose(genetic, z @ u)
    # PEV = s2e C^uu; reliability = 1 - PEV / (s2g K_ii)
    p, s2e = x.shape[1], model.fit_.s2e
    pev = s2e * np.diag(inverse[p:, p:])
    assert np.allclose(model.prediction_error_variance(), pev, rtol=1e-6)
    expected = 1 - pev / (model.fit_.s2g * np.diag(kernel.matrix))
    assert np.allclose(model.reliability(), expected, rtol=1e-6, atol=1e-9)
    # sampling covariance of b = s2e C^bb = (X' V^-1 X)^-1
    covariance = fixed_effect_covariance(model.fit_, kernel, model.individuals_, x)
    assert np.allclose(covariance, s2e * inverse[:p, :p], rtol=1e-6)


def textbook_reml(log_params, k_rr, x, y):
    """Negative REML log-likelihood at ``(log s2g, log s2e)``:
    ``1/2 [log|V| + log|X'V^-1 X| + y'P y + (n - p) log 2 pi]``,
    ``P = V^-1 - V^-1 X (X'V^-1 X)^-1 X'V^-1``."""
    s2g, s2e = np.exp(log_params)
    v = s2g * k_rr + s2e * np.eye(len(y))
    factor = linalg.cho_factor(v)
    v_inv_x = linalg.cho_solve(factor, x)
    v_inv_y = linalg.cho_solve(factor, y)
    xvx = x.T @ v_inv_x
    b = np.linalg.solve(xvx, x.T @ v_inv_y)
    py = v_inv_y - v_inv_x @ b
    log_det_v = 2 * np.log(np.diag(factor[0])).sum()
    n, p = x.shape
    return 0.5 * (
        log_det_v + np.linalg.slogdet(xvx)[1] + y @ py + (n - p) * np.log(2 * np.pi)
    )


def test_reml_fixed__maximises_the_textbook_restricted_likelihood():
    kernel, records, *_ = animal_problem(seed=1, n=70)
    design = FixedDesign(SEX_HERD_AGE).fit(records)
    x, y = design.matrix(records), records["response"].to_numpy()
    rows = kernel.index_of(records["name"])
    fit = reml(y, kernel, rows, x)
    k_rr = kernel.matrix[np.ix_(rows, rows)]
    best = optimize.minimize(
        textbook_reml, [0.0, 0.0], args=(k_rr, x, y), method="Nelder-Mead",
        options={"xatol": 1e-7, "fatol": 1e-10},
    )  # fmt: skip
    s2g, s2e = np.exp(best.x)
    assert np.isclose(fit.s2g, s2g, rtol=1e-3) and np.isclose(fit.s2e, s2e, rtol=1e-3)
    # same likelihood up to the constant log |X'X| / 2 the fit leaves out
    at_fit = -textbook_reml(np.log([fit.s2g, fit.s2e]), k_rr, x, y)
    assert np.isclose(fit.log_likelihood, at_fit + 0.5 * np.linalg.slogdet(x.T @ x)[1])
    assert -best.fun <= at_fit + 1e-6  # no better point than the fit's


def test_gblup_fixed__recovers_a_simulated_sex_effect():
    kernel, records, g, _ = animal_problem(seed=2, n=300, records_per=1, sex_effect=2.0)
    model = GBLUP(kernel, fixed=SEX_HERD_AGE).fit(records, None)
    covariance = fixed_effect_covariance(
        model.fit_, kernel, model.individuals_, model.covariates_
    )
    column = model.design_.names_.index("sex=M")
    estimate, se = model.fit_.beta[column], np.sqrt(covariance[column, column])
    assert 0.05 < se < 0.5
    assert abs(estimate - 2.0) < se  # within its standard error
    # without the fixed effects the sex difference inflates the genetic values
    plain = GBLUP(kernel).fit(records, None)
    r_fixed = np.corrcoef(model.fit_.blup, g)[0, 1]
    r_plain = np.corrcoef(plain.fit_.blup, g)[0, 1]
    assert r_fixed > r_plain + 0.05, (r_fixed, r_plain)


def test_fixed_design__unseen_level_gets_the_mean_effect_with_a_warning():
    train = pd.DataFrame({"herd": ["a", "b", "c", "a"], "age": [1.0, 2.0, 3.0, 2.0]})
    design = FixedDesign(FixedEffects(("herd",), ("age",))).fit(train)
    assert design.names_ == ["intercept", "herd=b", "herd=c", "age"]
    new = pd.DataFrame({"herd": ["z", "b", "y"], "age": [2.0, 2.0, 4.0]})
    with pytest.warns(InputWarning, match="'herd': 2 record"):
        x = design.matrix(new)
    effects = np.array([5.0, 1.0, 2.0, 0.5])  # intercept, b, c, age
    # levels a, b, c have effects 0, 1, 2: an unseen level gets their mean, 1
    assert np.allclose(x @ effects, [5.0 + 1.0, 6.0, 5.0 + 1.0 + 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        design.matrix(train)  # no warning for known levels


def test_reaction_norm_fixed__one_environment_is_gblup_with_fixed_effects():
    kernel, records, *_ = animal_problem(seed=3, n=60, records_per=1)
    rn = ReactionNorm(kernel, interaction=False, fixed=SEX_HERD_AGE)
    rn.fit(records, None)
    gblup = GBLUP(kernel, fixed=SEX_HERD_AGE).fit(records, None)
    assert np.isclose(rn.s2g_, gblup.fit_.s2g, rtol=1e-3)
    assert np.allclose(rn.predict(records), gblup.predict(records), atol=1e-3)


def test_cross_validate_fixed__validation_records_never_enter_the_fit():
    kernel, records, _, genotypes = animal_problem(seed=4, n=120, records_per=1)
    records["cv"] = np.arange(len(records)) % 4
    options = {"fixed": SEX_HERD_AGE, "relationship": kernel}
    table = Phenotypes(records.copy())
    predictions, accuracy = cross_validate(
        table, genotypes, ["gblup"], progress=False, options=options
    )
    # another response for every record of fold 0 changes no fold-0 prediction
    changed = records.copy()
    is_0 = changed["cv"] == 0
    changed.loc[is_0, "response"] = np.random.default_rng(5).normal(size=is_0.sum())
    again, _ = cross_validate(
        Phenotypes(changed), genotypes, ["gblup"], progress=False, options=options
    )
    on_0 = (predictions["cv"] == 0).to_numpy()
    assert np.allclose(predictions["prediction"][on_0], again["prediction"][on_0])
    # the fixed part is the one a GBLUP fitted on the other folds predicts
    model = GBLUP(kernel, fixed=SEX_HERD_AGE).fit(records[~is_0], None)
    fixed, _ = model.predict_parts(records[is_0])
    assert np.allclose(predictions["fixed"][on_0], fixed)
    pooled = accuracy[accuracy["fold"] == "all"].iloc[0]
    with_fixed = predictions["prediction"].to_numpy()
    genetic = with_fixed - predictions["fixed"].to_numpy()
    assert pooled["pearson_r"] > 0.5  # the fixed effects explain much of y
    assert np.isclose(
        pooled["pearson_r_genetic"],
        np.corrcoef(genetic, predictions["response"] - predictions["fixed"])[0, 1],
    )


def write_animal_inputs(directory, seed=6) -> list[str]:
    """An animal data set (sex, herd, age recorded beside the trait) as the CLI's
    phenotypes, chroms and markers tables; their paths in CLI order."""
    _, records, _, genotypes = animal_problem(seed=seed, n=100, records_per=1)
    records["cv"] = np.arange(len(records)) % 5
    write_phenotypes(Phenotypes(records), directory / "phenos.tsv")
    write_chroms(genotypes.markers, directory / "chroms.tsv")
    write_markers(genotypes, directory / "markers.tsv")
    return [str(directory / f) for f in ("phenos.tsv", "chroms.tsv", "markers.tsv")]


def test_cli_evaluate_fixed__accuracy_with_the_genetic_part(tmp_path):
    inputs = write_animal_inputs(tmp_path)
    out = tmp_path / "cv"
    base = ["evaluate", *inputs, "--methods", "gblup", "--quiet"]
    assert main([*base, "--out", str(out), "--fixed", "sex,herd",
                 "--fixed-numeric", "age"]) == 0  # fmt: skip
    accuracy = pd.read_csv(out / "accuracy.tsv", sep="\t")
    predictions = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert predictions["fixed"].notna().all()
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    plain = pd.read_csv(tmp_path / "plain" / "accuracy.tsv", sep="\t")
    pooled = accuracy["fold"] == "all"
    assert (
        accuracy.loc[pooled, "pearson_r"].item()
        > plain.loc[plain["fold"] == "all", "pearson_r"].item()
    )
    assert accuracy["pearson_r_genetic"].notna().all()


def test_cli_fixed__refuses_an_unknown_or_non_numeric_column(tmp_path, capsys):
    inputs = write_animal_inputs(tmp_path)
    out = tmp_path / "cv"
    base = ["evaluate", *inputs, "--methods", "gblup", "--quiet", "--out", str(out)]
    assert main([*base, "--fixed", "litter"]) == 1
    err = capsys.readouterr().err
    assert "--fixed" in err and "'litter'" in err and not out.exists()
    assert main([*base, "--fixed-numeric", "sex"]) == 1
    err = capsys.readouterr().err
    assert "column 'sex'" in err and "not a number" in err and not out.exists()
