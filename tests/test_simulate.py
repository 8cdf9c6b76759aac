"""Coalescent simulation of genotypes and phenotypes with a known truth."""

import dataclasses

import numpy as np
import pytest

from gperceiver.data import MISSING, natural_key
from gperceiver.simulate import SimulatedData, SimulationConfig, simulate

# Small enough to simulate in well under a second.
SMALL = SimulationConfig(
    n_individuals=120,
    n_chromosomes=3,
    n_markers=450,
    chromosome_length_bp=30_000_000,
    n_qtl=40,
    n_environments=3,
    n_folds=5,
    seed=7,
)


def small(**changes) -> SimulatedData:
    return simulate(dataclasses.replace(SMALL, **changes))


def by_block(data: SimulatedData, column: str) -> np.ndarray:
    """Truth column as ``(N, E)``, individuals in genotype order."""
    wide = data.truth.pivot(index="name", columns="block", values=column)
    return wide.loc[data.genotypes.names].to_numpy()


@pytest.fixture(scope="module")
def default_small() -> SimulatedData:
    return simulate(SMALL)


@pytest.mark.parametrize("ploidy", [1, 2, 4])
def test_simulate__shapes_and_dtypes(ploidy):
    data = small(ploidy=ploidy)
    geno = data.genotypes
    assert geno.alleles.shape == (120, 450, ploidy)
    assert geno.alleles.dtype == np.uint8
    assert geno.n_alleles == 2 and geno.ploidy == ploidy
    assert geno.alleles.max() == 2
    assert (np.diff(geno.alleles.astype(int), axis=-1) >= 0).all()
    assert geno.names[0] == "ind0001" and len(set(geno.names)) == 120

    table = data.phenotypes.table
    assert list(table.columns) == ["name", "response", "block", "cv"]
    assert len(table) == 120 * 3
    assert sorted(table["block"].unique()) == [0, 1, 2]
    assert set(table["name"]) == set(geno.names)
    assert list(data.truth.columns) == [
        "name",
        "block",
        "additive",
        "dominance",
        "epistasis",
        "genetic",
    ]
    assert np.isfinite(table["response"]).all()
    assert data.qtl.shape == (40,) and len(np.unique(data.qtl)) == 40


def test_simulate__cv_folds_per_individual(default_small):
    table = default_small.phenotypes.table
    assert (table.groupby("name")["cv"].nunique() == 1).all()
    assert default_small.phenotypes.folds() == ["0", "1", "2", "3", "4"]
    per_fold = table[table["block"] == 0]["cv"].value_counts()
    assert (per_fold == 24).all()


def test_simulate__allele_ids_ranked_by_frequency():
    geno = small(missing_rate=0.0).genotypes
    assert geno.missing_rate() == 0.0
    freq = geno.allele_frequencies()
    assert (freq[:, 0] >= freq[:, 1]).all()
    assert (freq[:, 1] >= 0.05).all()  # min_maf


def test_simulate__multiallelic_sites():
    data = small(n_alleles=3)
    alleles = data.genotypes.alleles
    assert alleles.max() == 3 and data.genotypes.n_alleles == 3
    present = np.stack([(alleles == a).any(axis=(0, 2)) for a in (1, 2, 3)], axis=1)
    assert present[:, :2].all()  # ids are 1..k with no gap
    assert present[:, 2].mean() > 0.5  # multi-allelic sites are preferred


def test_simulate__missing_rate():
    data = small(missing_rate=0.05, ploidy=2)
    alleles = data.genotypes.alleles
    assert data.genotypes.missing_rate() == pytest.approx(0.05, abs=0.005)
    missing = alleles == MISSING
    whole = missing.all(-1)
    assert whole.sum() * 2 / missing.sum() > 0.8  # mostly whole genotypes
    assert (missing.sum(-1) == 1).any()  # some single uncalled copies
    assert (missing[..., 1] <= missing[..., 0]).all()  # MISSING sorts first


def test_simulate__deterministic_for_seed(default_small):
    again = simulate(SMALL)
    other = small(seed=8)
    assert np.array_equal(again.genotypes.alleles, default_small.genotypes.alleles)
    assert again.phenotypes.table.equals(default_small.phenotypes.table)
    assert again.truth.equals(default_small.truth)
    assert not np.array_equal(
        other.genotypes.markers.pos, default_small.genotypes.markers.pos
    )
    assert not np.allclose(
        other.phenotypes.table["response"], default_small.phenotypes.table["response"]
    )


@pytest.mark.parametrize("h2", [0.2, 0.5, 0.9])
def test_simulate__heritability_in_sample(h2):
    data = small(heritability=h2)
    merged = data.truth.merge(data.phenotypes.table, on=["name", "block"])
    for _, rows in merged.groupby("block"):
        realised = rows["genetic"].var() / rows["response"].var()
        assert realised == pytest.approx(h2, abs=0.01)


def test_simulate__genetic_is_sum_of_components(default_small):
    truth = default_small.truth
    total = truth["additive"] + truth["dominance"] + truth["epistasis"]
    assert np.allclose(truth["genetic"], total)


def test_simulate__variance_shares(default_small):
    for column, share in [("additive", 0.8), ("dominance", 0.1), ("epistasis", 0.1)]:
        values = by_block(default_small, column)
        assert values.var(axis=0) == pytest.approx(np.full(3, share))


def test_simulate__haploid_has_no_dominance():
    data = small(ploidy=1)
    assert (data.truth["dominance"] == 0).all()
    assert by_block(data, "additive").var(axis=0) == pytest.approx(np.full(3, 0.9))


def test_simulate__gxe_correlation_one_gives_equal_blocks():
    genetic = by_block(small(gxe_correlation=1.0), "genetic")
    assert np.allclose(genetic, genetic[:, :1])


def test_simulate__low_gxe_correlation_differs_between_blocks():
    additive = by_block(small(gxe_correlation=0.1), "additive")
    corr = np.corrcoef(additive.T)[np.triu_indices(3, 1)]
    assert (corr < 0.6).all()
    assert not np.allclose(additive, additive[:, :1])


def test_simulate__markers_sorted_and_unique(default_small):
    markers = default_small.genotypes.markers
    assert markers.chrom_names == ("chr1", "chr2", "chr3")
    assert np.bincount(markers.chrom).tolist() == [150, 150, 150]
    key = markers.chrom * 1e12 + markers.pos
    assert (np.diff(key) > 0).all()
    assert len(set(markers.names)) == len(markers)
    assert markers.names[0] == f"chr1_{int(markers.pos[0])}"
    assert markers.pos.min() >= 1 and markers.pos.max() <= 30_000_000
    assert sorted(markers.chrom_names, key=natural_key) == list(markers.chrom_names)


def test_simulate__adjacent_markers_in_ld(default_small):
    geno = default_small.genotypes
    dosage = geno.dosages()[:, :, 0].astype(np.float64)
    r2 = np.corrcoef(dosage.T) ** 2
    chrom = geno.markers.chrom
    idx = np.arange(geno.n_markers - 1)
    adjacent = r2[idx, idx + 1][chrom[idx] == chrom[idx + 1]]
    between = r2[np.not_equal.outer(chrom, chrom)]
    assert adjacent.mean() > 0.1
    assert adjacent.mean() > 5 * between.mean()


def test_simulate__too_few_sites_raises():
    with pytest.raises(ValueError, match="mutation_rate"):
        small(mutation_rate=1e-11)


@pytest.mark.parametrize(
    "changes",
    [
        {"heritability": 0.0},
        {"dominance_variance": 0.6, "epistasis_variance": 0.6},
        {"n_qtl": 1000},
        {"gxe_correlation": 1.5},
        {"n_alleles": 1},
    ],
)
def test_simulation_config__rejects_invalid(changes):
    with pytest.raises(ValueError, match="invalid SimulationConfig"):
        dataclasses.replace(SMALL, **changes)


def test_simulate__fixed_effects_add_sex_and_age_with_their_truth(default_small):
    data = small(fixed_variance=0.4)
    table, truth = data.phenotypes.table, data.truth
    assert list(table.columns) == ["name", "response", "block", "cv", "sex", "age"]
    # the same genotypes and genetic values; the response gains exactly the fixed part
    assert np.array_equal(data.genotypes.alleles, default_small.genotypes.alleles)
    assert np.allclose(truth["genetic"], default_small.truth["genetic"])
    added = table["response"] - default_small.phenotypes.table["response"]
    effects = data.fixed_effects
    expected = effects["sex=M"] * (table["sex"] == "M") + effects["age"] * table["age"]
    assert np.allclose(added, expected) and np.allclose(truth["fixed"], expected)
    assert table.groupby("name")["sex"].nunique().max() == 1  # sex per individual
    for _, rows in table.assign(fixed=expected).groupby("block"):
        fixed_var = rows["fixed"].var()
        rest_var = (rows["response"] - rows["fixed"]).var()
        assert fixed_var / (fixed_var + rest_var) == pytest.approx(0.4, abs=0.05)
