"""GBLUP / RKHS baselines: relationship matrices, REML, BLUP and the model classes."""

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from gperceiver.baselines import (
    DEFAULT_BANDWIDTHS,
    GBLUP,
    RKHS,
    Kernel,
    WeightedGBLUP,
    additive_effects,
    gaussian_kernel,
    genomic_relationship,
    kernel_effects,
    mixed_weights,
    relationship_mixes,
    reml,
)
from gperceiver.data import MISSING, Genotypes, MarkerMap
from gperceiver.simulate import SimulationConfig, simulate


def make_genotypes(alleles: np.ndarray, n_alleles: int) -> Genotypes:
    n, m, _ = alleles.shape
    markers, _ = MarkerMap.from_columns(
        ["1"] * m, [f"m{j}" for j in range(m)], range(m)
    )
    names = np.array([f"i{k}" for k in range(n)])
    return Genotypes(np.sort(alleles, -1).astype(np.uint8), names, markers, n_alleles)


def random_genotypes(rng, n, m, ploidy=2, n_alleles=2, missing=0.0) -> Genotypes:
    """Copies drawn independently (Hardy-Weinberg) from random allele frequencies."""
    freq = rng.dirichlet(np.ones(n_alleles), size=m)  # (M, A)
    cumulative = freq.cumsum(1)
    u = rng.random((n, m, ploidy))
    alleles = 1 + (u[..., None] > cumulative[None, :, None, :]).sum(-1)
    alleles = np.minimum(alleles, n_alleles)
    alleles[rng.random(alleles.shape) < missing] = MISSING
    return make_genotypes(alleles, n_alleles)


def vanraden_method1(genotypes: Genotypes) -> np.ndarray:
    """VanRaden (2008) G = W W' / (2 sum p q), W = allele-2 count - 2 p, directly."""
    called = genotypes.alleles != MISSING
    count2 = (genotypes.alleles == 2).sum(-1).astype(np.float64)
    p = count2.sum(0) / called.sum((0, 2))
    count2 += (~called).sum(-1) * p  # mean imputation of uncalled copies
    polymorphic = (p > 0) & (p < 1)
    w = (count2 - 2 * p)[:, polymorphic]
    p = p[polymorphic]
    return w @ w.T / (2 * (p * (1 - p)).sum())


def test_relationship_equals_vanraden_method1():
    rng = np.random.default_rng(1)
    genotypes = random_genotypes(rng, 40, 60, missing=0.05)
    genotypes.alleles[:, 5] = [1, 1]  # a monomorphic marker, dropped
    assert np.allclose(
        genomic_relationship(genotypes), vanraden_method1(genotypes), rtol=1e-6
    )


def test_relationship_polyploid_multiallelic_chunks():
    rng = np.random.default_rng(2)
    genotypes = random_genotypes(rng, 300, 400, ploidy=4, n_alleles=3, missing=0.02)
    g = genomic_relationship(genotypes)
    assert np.allclose(g, genomic_relationship(genotypes, chunk=7))
    assert np.allclose(g, g.T)
    assert np.linalg.eigvalsh(g).min() > -1e-8
    # Hardy-Weinberg sample: self-relationship about 1, relationships about 0
    assert abs(np.diag(g).mean() - 1) < 0.05
    assert abs(g[np.triu_indices(len(g), 1)].mean()) < 0.01


def test_relationship_with_reference_frequencies():
    rng = np.random.default_rng(3)
    genotypes = random_genotypes(rng, 20, 30)
    half = np.full((30, 2), 0.5)
    dosage = genotypes.dosages()[:, :, 1].astype(np.float64) - 1.0
    expected = dosage @ dosage.T / (2 * 30 * 0.25)
    assert np.allclose(genomic_relationship(genotypes, half), expected)


def test_gaussian_kernel_is_over_centred_dosages():
    rng = np.random.default_rng(4)
    genotypes = random_genotypes(rng, 25, 50, n_alleles=3)
    p = genotypes.allele_frequencies()
    z = (genotypes.dosages() - 2 * p).reshape(25, -1).astype(np.float64)
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    median = np.median(d2[np.triu_indices(25, 1)])
    for h in (0.5, 2.0):
        expected = np.exp(-d2 / (h * median))
        assert np.allclose(
            gaussian_kernel(genomic_relationship(genotypes), h), expected
        )


@pytest.fixture
def tiny_mixed_model():
    """15 individuals (12 with records, 3 without), replicates, two fixed effects."""
    rng = np.random.default_rng(5)
    w = rng.normal(size=(15, 8))
    kernel = w @ w.T / 8 + 0.2 * np.eye(15)
    individuals = np.concatenate([np.arange(12), rng.integers(0, 12, size=18)])
    covariates = np.column_stack([np.ones(30), rng.normal(size=30)])
    g = rng.multivariate_normal(np.zeros(15), kernel)
    y = covariates @ [1.0, 0.5] + g[individuals] + rng.normal(scale=0.7, size=30)
    return y, kernel, individuals, covariates


def test_reml_blup_equals_henderson_mixed_model_equations(tiny_mixed_model):
    y, kernel, individuals, x = tiny_mixed_model
    fit = reml(y, kernel, individuals, x)
    assert 1e-3 < fit.delta < 1e3
    trained = np.arange(12)
    z = (individuals[:, None] == trained[None]).astype(np.float64)  # (n, 12)
    k_tt_inv = np.linalg.inv(kernel[:12, :12])
    lhs = np.block([[x.T @ x, x.T @ z], [z.T @ x, z.T @ z + fit.delta * k_tt_inv]])
    solution = np.linalg.solve(lhs, np.concatenate([x.T @ y, z.T @ y]))
    beta, u = solution[:2], solution[2:]
    u_new = kernel[12:, :12] @ k_tt_inv @ u
    assert np.allclose(fit.beta, beta, atol=1e-8)
    assert np.allclose(fit.blup, np.concatenate([u, u_new]), atol=1e-8)


def test_reml_maximises_the_restricted_likelihood(tiny_mixed_model):
    y, kernel, individuals, x = tiny_mixed_model
    k_rr = kernel[np.ix_(individuals, individuals)]

    def minus_restricted_log_likelihood(log_variances):
        s2g, s2e = np.exp(log_variances)
        v = s2g * k_rr + s2e * np.eye(len(y))
        v_inv = np.linalg.inv(v)
        xvx = x.T @ v_inv @ x
        p = v_inv - v_inv @ x @ np.linalg.solve(xvx, x.T @ v_inv)
        return 0.5 * (np.linalg.slogdet(v)[1] + np.linalg.slogdet(xvx)[1] + y @ p @ y)

    direct = optimize.minimize(
        minus_restricted_log_likelihood,
        x0=[0.0, 0.0],
        method="Nelder-Mead",
        options={"xatol": 1e-8, "fatol": 1e-12, "maxiter": 5000},
    )
    fit = reml(y, kernel, individuals, x)
    assert np.allclose([fit.s2g, fit.s2e], np.exp(direct.x), rtol=1e-3)
    assert np.isclose(fit.h2, fit.s2g / (fit.s2g + fit.s2e))


def test_fixed_delta_towards_h2_one_reproduces_training_phenotypes():
    rng = np.random.default_rng(6)
    genotypes = random_genotypes(rng, 50, 200)  # more markers than individuals
    records = pd.DataFrame(
        {"name": genotypes.names[:40], "response": rng.normal(5.0, 2.0, size=40)}
    )
    fitted = GBLUP(delta=1e-9).fit(records, genotypes).predict(records["name"])
    assert np.allclose(fitted, records["response"], atol=1e-5)
    shrunk = GBLUP(delta=1.0).fit(records, genotypes).predict(records["name"])
    assert np.abs(shrunk - records["response"]).mean() > 0.1


def test_reml_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="one row per record"):
        reml(np.zeros(3), np.eye(3), np.arange(2))
    with pytest.raises(ValueError, match="no degree of freedom"):
        reml(np.zeros(1), np.eye(3), np.arange(1))
    with pytest.raises(ValueError, match="explained exactly by X"):
        reml(np.full(3, 2.0), np.eye(3), np.arange(3))
    records = pd.DataFrame({"name": ["0"], "response": [1.0]})
    with pytest.raises(ValueError, match="pass genotypes"):
        GBLUP().fit(records, None)


def test_kernel_lookup_and_memoised_decompositions():
    kernel = Kernel(np.eye(3) + 1.0, ["a", "b", "c"], memory=1)
    assert kernel.index_of(["c", "a"]).tolist() == [2, 0]
    with pytest.raises(KeyError, match="no genotypes"):
        kernel.index_of(["a", "zz"])
    x = np.ones((2, 1))
    first = kernel.spectrum(np.array([0, 1]), x)
    assert kernel.spectrum(np.array([0, 1]), x) is first
    kernel.spectrum(np.array([1, 2]), x)  # evicts the first (memory=1)
    assert kernel.spectrum(np.array([0, 1]), x) is not first
    assert kernel.gaussian(1.0) is kernel.gaussian(1)


@pytest.fixture(scope="module")
def additive_simulation():
    """Coalescent genotypes, purely additive trait with h2 = 0.9, one environment."""
    config = SimulationConfig(
        n_individuals=600,
        n_markers=1000,
        heritability=0.9,
        dominance_variance=0.0,
        epistasis_variance=0.0,
        n_environments=1,
        seed=0,
    )
    data = simulate(config)
    additive = data.truth.set_index("name")["additive"]
    return data, additive


def test_gblup_recovers_additive_values_and_heritability(additive_simulation):
    data, additive = additive_simulation
    records = data.phenotypes.table
    model = GBLUP().fit(records, data.genotypes)
    predicted = model.predict(records["name"])
    assert np.corrcoef(predicted, additive[records["name"]])[0, 1] >= 0.9
    assert abs(model.fit_.h2 - 0.9) < 0.1


def test_gblup_predicts_new_individuals(additive_simulation):
    data, additive = additive_simulation
    records = data.phenotypes.table
    held_out = records["cv"].astype(int) < 2
    model = GBLUP().fit(records[~held_out], data.genotypes)
    names = records.loc[held_out, "name"]
    assert np.corrcoef(model.predict(names), additive[names])[0, 1] >= 0.8


def test_rkhs_keeps_the_most_likely_bandwidth(additive_simulation):
    data, additive = additive_simulation
    records = data.phenotypes.table
    relationship = Kernel.relationship(data.genotypes)
    model = RKHS(relationship, bandwidths=(0.5, 2.0, 8.0)).fit(records, data.genotypes)
    individuals = relationship.index_of(records["name"])
    y = records["response"].to_numpy()
    likelihoods = {
        h: reml(y, relationship.gaussian(h), individuals).log_likelihood
        for h in (0.5, 2.0, 8.0)
    }
    assert model.bandwidth_ == max(likelihoods, key=likelihoods.get)
    same = GBLUP(relationship.gaussian(model.bandwidth_)).fit(records, None)
    assert np.allclose(model.predict(records["name"]), same.predict(records["name"]))
    truth = additive[records["name"]]
    assert np.corrcoef(model.predict(records["name"]), truth)[0, 1] >= 0.9


def tetraploid_split(seed: int, **options):
    """Tetraploid, 3-allele genotypes with missing copies, one trait: genotypes,
    phenotype table, training mask (cv >= 2), training and held-out rows and the
    training individuals' allele frequencies."""
    config = SimulationConfig(
        n_individuals=120,
        n_markers=300,
        ploidy=4,
        n_alleles=3,
        missing_rate=0.05,
        seed=seed,
        **{"n_environments": 1, **options},
    )
    data = simulate(config)
    g, table = data.genotypes, data.phenotypes.table
    train = (table["cv"].astype(int) >= 2).to_numpy()
    train_rows = g.index_of(table.loc[train, "name"])
    held = g.index_of(table.loc[~train, "name"])
    return g, table, train, train_rows, held, g.allele_frequencies(train_rows)


def test_additive_effects_predict_new_individuals_exactly_as_gblup():
    """Marker effects from the training individuals give GBLUP's BLUPs of held-out
    individuals (tetraploid, 3 alleles, missing copies), G centred the same way."""
    g, table, train, train_rows, held, frequencies = tetraploid_split(3)
    fit = additive_effects(
        g.subset(individuals=train_rows), table.loc[train, "response"], frequencies
    )
    kernel = Kernel(genomic_relationship(g, frequencies), g.names)
    gblup = GBLUP(kernel).fit(table[train], None)
    z = g.dosages(frequencies) - g.ploidy * frequencies
    direct = fit.intercept + np.einsum("nma,ma->n", z, fit.effects)
    assert np.allclose(direct[held], gblup.predict(g.names[held]), atol=1e-6)
    assert abs(fit.h2 - gblup.fit_.h2) < 1e-9


def test_kernel_effects_predict_new_individuals_as_the_rkhs_blup():
    """A kernel fit on the training individuals predicts held-out ones exactly as
    the BLUP ``K[held, train] H^-1 (y - X b)`` of the same Gaussian kernel written
    over every individual (tetraploid, 3 alleles, missing copies), and its
    leave-one-out predictions are those of refits without each record."""
    g, table, train, train_rows, held, frequencies = tetraploid_split(
        5, epistasis_variance=0.5
    )
    y = table.loc[train, "response"].to_numpy()
    fit = kernel_effects(g.subset(individuals=train_rows), y, frequencies)
    # the same kernel over all individuals, its scale fixed by the training pairs
    relationship = genomic_relationship(g, frequencies)
    diag = np.diag(relationship)
    d2 = np.maximum(diag[:, None] + diag[None, :] - 2 * relationship, 0.0)
    train_d2 = d2[np.ix_(train_rows, train_rows)]
    median = np.median(train_d2[np.triu_indices(len(train_rows), k=1)])
    kernel = np.exp(-d2 / (fit.bandwidth * median))
    direct = reml(y, kernel[np.ix_(train_rows, train_rows)], np.arange(len(y)))
    blup = direct.beta[0] + kernel[np.ix_(held, train_rows)] @ direct.weights
    assert fit.bandwidth in DEFAULT_BANDWIDTHS
    assert np.allclose(fit.predict(g.subset(individuals=held)), blup, atol=1e-6)
    refit = reml(
        y[1:], kernel[np.ix_(train_rows[1:], train_rows[1:])], np.arange(len(y) - 1),
        delta=direct.delta,
    )  # fmt: skip
    left_out = refit.beta[0] + kernel[train_rows[0], train_rows[1:]] @ refit.weights
    assert np.isclose(fit.loo_predictions[0], left_out, atol=1e-6)


def test_kernel_effects__shared_kernels_refit_another_response_identically():
    """Two environments' responses on the same individuals: fits that share one
    ``kernels`` memo (one eigendecomposition per bandwidth for both) equal fits
    that compute everything afresh, and the second fit adds no kernel."""
    g, table, train, train_rows, _, frequencies = tetraploid_split(
        5, epistasis_variance=0.5
    )
    part = g.subset(individuals=train_rows)
    y = table.loc[train, "response"].to_numpy()
    other = y[::-1] * 0.5 + np.random.default_rng(1).normal(size=len(y))
    kernels = {}
    for response in (y, other):
        shared = kernel_effects(part, response, frequencies, kernels=kernels)
        alone = kernel_effects(part, response, frequencies)
        assert shared.bandwidth == alone.bandwidth
        assert np.isclose(shared.log_likelihood, alone.log_likelihood, atol=1e-9)
        assert np.allclose(shared.weights, alone.weights, atol=1e-9)
        assert np.allclose(shared.loo_predictions, alone.loo_predictions, atol=1e-9)
        assert set(DEFAULT_BANDWIDTHS) <= set(kernels)
    assert len(kernels) == len(DEFAULT_BANDWIDTHS) + 2  # + distances and median


def every_third_marker(g: Genotypes) -> tuple[np.ndarray, np.ndarray]:
    """Markers 0, 3, 6, ... and their 0/1 indicator ``(M,)``."""
    chosen = np.arange(0, g.n_markers, 3)
    indicator = np.zeros(g.n_markers)
    indicator[chosen] = 1.0
    return chosen, indicator


def test_mixed_weights__mean_one_from_uniform_to_the_prior():
    values = np.array([0.0, 1.0, 3.0, 0.0])
    assert np.allclose(mixed_weights(values, 0.0), 1.0)
    assert np.allclose(mixed_weights(values, 1.0), values / values.mean())
    for mix in (0.25, 0.9):
        assert np.isclose(mixed_weights(values, mix).mean(), 1.0)


def test_weighted_relationship__zero_weight_drops_a_marker_and_scale_cancels():
    g, *_, frequencies = tetraploid_split(3)
    chosen, indicator = every_third_marker(g)
    alone = genomic_relationship(g.subset(markers=chosen), frequencies[chosen])
    weighted = genomic_relationship(g, frequencies, marker_weights=indicator)
    assert np.allclose(weighted, alone)
    doubled = genomic_relationship(
        g, frequencies, marker_weights=np.full(g.n_markers, 2.0)
    )
    assert np.allclose(doubled, genomic_relationship(g, frequencies))


def test_relationship_mixes__equal_the_weighted_relationship_of_each_mix():
    g, *_, frequencies = tetraploid_split(3)
    prior = np.random.default_rng(0).exponential(size=g.n_markers)
    mixes = relationship_mixes(g, frequencies, prior, (0.0, 0.3, 1.0))
    assert [mix for mix, _ in mixes] == [0.0, 0.3, 1.0]
    for mix, relationship in mixes:
        weights = mixed_weights(prior, mix)
        expected = genomic_relationship(g, frequencies, marker_weights=weights)
        assert np.allclose(relationship, expected)
    # a prior on a monomorphic marker only: the prior-alone kernel is undefined
    frequencies = frequencies.copy()
    frequencies[0] = np.eye(frequencies.shape[1])[0]  # marker 0: allele 1 only
    on_marker_0 = np.eye(g.n_markers)[0]
    kept = [mix for mix, _ in relationship_mixes(g, frequencies, on_marker_0)]
    assert 1.0 not in kept and 0.0 in kept


def test_weighted_additive_effects_predict_as_weighted_gblup():
    """Allele effects of weighted GBLUP (prior mix 0.5) give the BLUPs of held-out
    individuals under the weighted relationship ``Z W Z' / c``."""
    g, table, train, train_rows, held, frequencies = tetraploid_split(3)
    weights = mixed_weights(every_third_marker(g)[1], 0.5)
    fit = additive_effects(
        g.subset(individuals=train_rows),
        table.loc[train, "response"],
        frequencies,
        marker_weights=weights,
    )
    kernel = Kernel(
        genomic_relationship(g, frequencies, marker_weights=weights), g.names
    )
    gblup = GBLUP(kernel).fit(table[train], None)
    z = g.dosages(frequencies) - g.ploidy * frequencies
    direct = fit.intercept + np.einsum("nma,ma->n", z, fit.effects)
    assert np.allclose(direct[held], gblup.predict(g.names[held]), atol=1e-6)
    assert np.isclose(fit.log_likelihood, gblup.fit_.log_likelihood)


def test_prior_alone_fits_equal_fits_on_the_prior_markers():
    """A 0/1 prior at mix 1 is GBLUP / RKHS on the markers it selects: the same
    held-out predictions, likelihood and leave-one-out predictions."""
    g, table, train, train_rows, held, frequencies = tetraploid_split(
        5, epistasis_variance=0.5
    )
    chosen, indicator = every_third_marker(g)
    y = table.loc[train, "response"].to_numpy()
    part = g.subset(individuals=train_rows)
    z = g.dosages(frequencies) - g.ploidy * frequencies  # (N, M, A)
    weights = mixed_weights(indicator, 1.0)
    weighted = additive_effects(part, y, frequencies, marker_weights=weights)
    alone = additive_effects(part.subset(markers=chosen), y, frequencies[chosen])
    assert np.allclose(
        np.einsum("nma,ma->n", z[held], weighted.effects),
        np.einsum("nma,ma->n", z[held][:, chosen], alone.effects),
    )
    weighted_rkhs = kernel_effects(part, y, frequencies, marker_weights=weights)
    alone_rkhs = kernel_effects(part.subset(markers=chosen), y, frequencies[chosen])
    assert np.allclose(
        weighted_rkhs.predict(g.subset(individuals=held)),
        alone_rkhs.predict(g.subset(individuals=held, markers=chosen)),
    )
    for a, b in ((weighted, alone), (weighted_rkhs, alone_rkhs)):
        assert np.isclose(a.log_likelihood, b.log_likelihood)
        assert np.allclose(a.loo_predictions, b.loo_predictions)


def test_reml_leave_one_out_residuals_equal_refits_without_the_record(tiny_mixed_model):
    y, k, individuals, x = tiny_mixed_model
    fit = reml(y, k, individuals, x)
    for i in (0, 3, len(y) - 1):
        keep = np.arange(len(y)) != i
        refit = reml(y[keep], k, individuals[keep], x[keep], delta=fit.delta)
        predicted = x[i] @ refit.beta + refit.blup[individuals[i]]
        assert np.isclose(fit.loo_residuals[i], y[i] - predicted, atol=1e-8)


def test_weighted_gblup__one_mix_of_highest_likelihood_summed_over_blocks():
    """The mix is the argmax of GBLUP's restricted likelihoods summed over the
    blocks (GBLUP fitted on its own per block and kernel), and predictions are
    GBLUP's per block under that kernel; identical candidates tie to the first."""
    g, table, train, *_ = tetraploid_split(6, n_environments=2)
    kernels = [
        (mix, Kernel(relationship, g.names))
        for mix, relationship in relationship_mixes(
            g, g.allele_frequencies(), every_third_marker(g)[1]
        )
    ]
    records, held = table[train], table[~train]
    blocks = sorted(records["block"].unique())
    assert len(blocks) == 2

    def summed(kernel):
        return sum(
            GBLUP(kernel).fit(records[records["block"] == b], None).fit_.log_likelihood
            for b in blocks
        )

    model = WeightedGBLUP(kernels).fit(records)
    expected_mix, expected_kernel = max(kernels, key=lambda pair: summed(pair[1]))
    assert model.mix_ == expected_mix
    prediction = model.predict(held)
    for b in blocks:
        here = (held["block"] == b).to_numpy()
        gblup = GBLUP(expected_kernel).fit(records[records["block"] == b], None)
        assert np.allclose(prediction[here], gblup.predict(held["name"][here]))
    same = [(mix, kernels[0][1]) for mix in (0.0, 0.5, 1.0)]
    assert WeightedGBLUP(same).fit(records).mix_ == 0.0
