"""Simulated genotypes and phenotypes with a known truth, for tests and benchmarks.

Genotypes come from the coalescent with recombination (msprime), so markers show
realistic linkage disequilibrium and allele frequencies. Phenotypes add additive,
dominance and epistatic genetic values, genotype-by-environment interaction and
noise at a chosen heritability. With ``weather_days`` every environment also gets a
daily weather series, and the genotype-by-environment interaction follows from it:
each QTL allele has a sensitivity to seasonal stress indices (heat at flowering,
mid-season rain, early-season temperature), so the interaction is predictable for
an environment whose weather is known, as in multi-environment maize trials.

Shape letters: N individuals, M markers, P ploidy, A alleles, E environments
(blocks), Q causal markers (QTL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import io
from .coalescent import simulate_markers
from .data import MISSING, EnvCovariates, Genotypes, Phenotypes

# Share of missing copies that belong to wholly uncalled genotypes; genotype callers
# mostly fail a whole locus of a sample, rarely a single copy of a polyploid.
WHOLE_GENOTYPE_SHARE = 0.9
WEATHER = ["temperature", "rain", "radiation"]  # daily covariates, degC, mm, MJ/m2
# Stress indices driving the interaction: (covariate, first and last share of the
# season averaged). Flowering heat and mid-season water are the classic maize
# stresses; early temperature sets establishment.
STRESS_WINDOWS = [
    ("temperature", 0.45, 0.65),
    ("rain", 0.3, 0.7),
    ("temperature", 0.0, 0.25),
]


@dataclass
class SimulationConfig:
    """Parameters of :func:`simulate`; the defaults mimic a small breeding panel.

    Lengths are in bp, rates per bp per generation, variances as shares of the
    genetic variance within an environment.
    """

    # Enough for stable prediction accuracies, still fast to simulate and fit.
    n_individuals: int = 500
    # Independent linkage groups; three show between-chromosome structure cheaply.
    n_chromosomes: int = 3
    # Total markers, split evenly across chromosomes: a small SNP panel.
    n_markers: int = 3000
    # Copies per locus: 1 for haploids or inbred lines, 2 diploids, 4 tetraploids.
    ploidy: int = 2
    # Most alleles per site; above 2, recurrent mutation makes multi-allelic sites.
    n_alleles: int = 2
    # 100 Mb, about 1 Morgan at the default recombination rate, like a crop chromosome.
    chromosome_length_bp: int = 100_000_000
    # 1 cM per Mb, a common genome-wide average.
    recombination_rate: float = 1e-8
    # A typical per-bp rate; gives several times the segregating sites needed.
    mutation_rate: float = 1e-8
    # Small like breeding populations: LD extends over cM and msprime runs fast.
    population_size: int = 500
    # Bp between candidate sites; None: 1 for SNPs, and for n_alleles > 2 wide
    # enough that each site (then a short haplotype block) mutates about
    # MUTATIONS_PER_SITE times in the genealogy.
    site_spacing_bp: int | None = None
    # Share of allele copies left uncalled: a 99 % call rate, as on SNP arrays.
    missing_rate: float = 0.01
    # Usual marker QC: the second most common allele must reach this frequency.
    min_maf: float = 0.05
    # Blocks, i.e. trial sites or years, each with its own phenotype.
    n_environments: int = 4
    # var(g) / var(y) within every environment, exact in the simulated sample.
    heritability: float = 0.5
    # Causal markers: a polygenic trait.
    n_qtl: int = 200
    # Share of genetic variance from heterozygote effects; ignored for haploids.
    dominance_variance: float = 0.1
    # Share from pairwise additive-by-additive epistasis between random QTL.
    epistasis_variance: float = 0.1
    # Correlation of additive values between environments: moderate GxE. With
    # weather, the share of additive variance from the main effects (the rest
    # comes from sensitivities to the weather's stress indices).
    gxe_correlation: float = 0.7
    # Days of daily weather per environment; 0: no weather, the interaction is
    # random per environment. A maize season is about 120 days.
    weather_days: int = 0
    # Share of the phenotypic variance from fixed effects, half from a factor
    # (sex, per individual) and half from a covariate (age, per record), the same
    # in every environment; 0: none (the phenotypes then have no sex, age columns).
    fixed_variance: float = 0.0
    # Cross-validation folds, drawn per individual so its records share one fold.
    n_folds: int = 10
    # Seeds every random draw, msprime's included.
    seed: int = 0

    def __post_init__(self):
        checks = {
            "n_individuals must be at least 2": self.n_individuals >= 2,
            "n_chromosomes must be at least 1": self.n_chromosomes >= 1,
            "n_markers must be at least n_chromosomes": (
                self.n_markers >= self.n_chromosomes
            ),
            "ploidy must be between 1 and 16": 1 <= self.ploidy <= 16,
            "n_alleles must be between 2 and 255": 2 <= self.n_alleles <= 255,
            "site_spacing_bp must be at least 1": (
                self.site_spacing_bp is None or self.site_spacing_bp >= 1
            ),
            "missing_rate must be in [0, 1)": 0 <= self.missing_rate < 1,
            "min_maf must be in [0, 0.5)": 0 <= self.min_maf < 0.5,
            "n_environments must be at least 1": self.n_environments >= 1,
            "heritability must be in (0, 1]": 0 < self.heritability <= 1,
            "n_qtl must be between 2 and n_markers": 2 <= self.n_qtl <= self.n_markers,
            "dominance_variance and epistasis_variance must be >= 0, sum <= 1": (
                min(self.dominance_variance, self.epistasis_variance) >= 0
                and self.dominance_variance + self.epistasis_variance <= 1
            ),
            "gxe_correlation must be in [0, 1]": 0 <= self.gxe_correlation <= 1,
            "fixed_variance must be in [0, 1)": 0 <= self.fixed_variance < 1,
            "weather_days must be 0 or at least 20": (
                self.weather_days == 0 or self.weather_days >= 20
            ),
            "n_folds must be between 1 and n_individuals": (
                1 <= self.n_folds <= self.n_individuals
            ),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid SimulationConfig: " + "; ".join(failed))


@dataclass
class SimulatedData:
    """Output of :func:`simulate`.

    ``phenotypes.table`` has one row per individual and environment (columns
    name, response, block, cv); ``truth`` has the same rows with columns name,
    block, additive, dominance, epistasis and genetic (their sum), so that
    ``response = genetic + noise`` (``+ fixed`` with ``fixed_variance``: then
    the table has ``sex`` and ``age`` columns, ``truth`` a ``fixed`` column and
    ``fixed_effects`` the true ``sex=M`` effect and ``age`` slope). ``qtl``
    holds the marker indices ``(Q,)`` of the causal markers. ``covariates``
    holds the daily weather (``weather_days > 0``) and ``stress`` ``(E, 3)``
    the standardised indices of ``STRESS_WINDOWS`` computed from it, which drive
    the interaction.
    """

    genotypes: Genotypes
    phenotypes: Phenotypes
    truth: pd.DataFrame
    config: SimulationConfig
    qtl: np.ndarray
    covariates: EnvCovariates | None = None
    stress: np.ndarray | None = None
    fixed_effects: dict[str, float] | None = None


def _fixed_effects(config: SimulationConfig, response: np.ndarray):
    """Sex per individual, age per record ``(N, E)`` and their effects, scaled so
    that they explain ``fixed_variance`` of the phenotypic variance (half each).

    Drawn from their own random stream: the genotypes and genetic values do not
    change with ``fixed_variance``. Returns ``(sex (N,), age (N, E), fixed (N,
    E), {"sex=M": effect, "age": slope})``.
    """
    rng = np.random.default_rng([config.seed, 2])
    n, e = response.shape
    sex = rng.choice(np.array(["F", "M"]), size=n)
    age = np.round(rng.uniform(1.0, 5.0, size=(n, e)), 2)
    share = config.fixed_variance
    each = 0.5 * share / (1.0 - share) * float(response.var(0).mean())
    male = (sex == "M").astype(np.float64)
    effects = {
        "sex=M": float(np.sqrt(each / max(male.var(), 1e-12))),
        "age": float(np.sqrt(each / age.var())),
    }
    fixed = effects["sex=M"] * male[:, None] + effects["age"] * age
    return sex, age, fixed, effects


def simulate(config: SimulationConfig) -> SimulatedData:
    """Simulate genotypes, phenotypes and their true genetic values.

    Deterministic for a given ``config`` (seed included). Raises ``ValueError``
    when a chromosome has too few segregating sites for its share of markers.
    """
    rng = np.random.default_rng(config.seed)
    alleles, markers = simulate_markers(config, rng)

    qtl = np.sort(rng.choice(config.n_markers, config.n_qtl, replace=False))
    covariates = stress = None
    if config.weather_days:
        weather_rng = np.random.default_rng([config.seed, 1])  # genotypes unchanged
        covariates = _weather(config.n_environments, config.weather_days, weather_rng)
        stress = _stress_indices(covariates)
    additive, dominance, epistasis = _genetic_values(
        alleles[:, qtl], config, rng, stress
    )
    genetic = additive + dominance[:, None] + epistasis[:, None]
    response = genetic + _noise(genetic, config.heritability, rng)
    folds = rng.permutation(np.arange(config.n_individuals) % config.n_folds)

    width = max(4, len(str(config.n_individuals)))
    names = np.array([f"ind{i + 1:0{width}d}" for i in range(config.n_individuals)])
    e = config.n_environments
    long_names = np.tile(names, e)
    environments = np.repeat(np.arange(e), config.n_individuals)
    truth = pd.DataFrame(
        {
            "name": long_names,
            "block": environments,
            "additive": additive.T.ravel(),
            "dominance": np.tile(dominance, e),
            "epistasis": np.tile(epistasis, e),
            "genetic": genetic.T.ravel(),
        }
    )
    table = pd.DataFrame(
        {
            "name": long_names,
            "response": response.T.ravel(),
            "block": environments,
            "cv": np.tile(folds, e),
        }
    )
    effects = None
    if config.fixed_variance > 0:
        sex, age, fixed, effects = _fixed_effects(config, response)
        table["response"] += fixed.T.ravel()
        table["sex"], table["age"] = np.tile(sex, e), age.T.ravel()
        truth["fixed"] = fixed.T.ravel()
    observed = _mask_missing(alleles, config.missing_rate, rng)
    return SimulatedData(
        genotypes=Genotypes(observed, names, markers, config.n_alleles),
        phenotypes=Phenotypes(table, source="simulation"),
        truth=truth,
        config=config,
        qtl=qtl,
        covariates=covariates,
        stress=stress,
        fixed_effects=effects,
    )


def _standardise(x: np.ndarray) -> np.ndarray:
    """Centre and scale columns to unit sample variance (constant columns to 0)."""
    centred = x - x.mean(0)
    sd = centred.std(0)
    return np.divide(centred, sd, out=np.zeros_like(centred), where=sd > 0)


def _weather(n_env: int, days: int, rng: np.random.Generator) -> EnvCovariates:
    """Daily temperature, rain and radiation ``(E, T, 3)`` of ``n_env`` sites.

    Each site has its own mean temperature and within-season trend, a seasonal
    arc, autocorrelated day-to-day noise, a rain frequency and amount with a dry
    spell at a site-specific time, and radiation that falls on rainy days.
    """
    t = np.arange(days) / days  # (T,) share of the season
    arc = np.sin(np.pi * t)
    site_mean = rng.normal(22.0, 3.0, (n_env, 1))
    trend = rng.normal(0.0, 4.0, (n_env, 1)) * (t - 0.5)
    noise = np.zeros((n_env, days))
    shocks = rng.normal(0.0, 1.8, (n_env, days))
    for d in range(days):  # AR(1), lag-one correlation 0.8, stationary sd 3
        noise[:, d] = (0.8 * noise[:, d - 1] if d else 0.0) + shocks[:, d]
    temperature = site_mean + 8.0 * arc + trend + noise
    wet_share = rng.uniform(0.2, 0.5, (n_env, 1))
    dry_centre = rng.uniform(0.3, 0.8, (n_env, 1))
    dry = np.exp(-(((t - dry_centre) / 0.1) ** 2))
    wet = rng.random((n_env, days)) < wet_share * (1.0 - 0.9 * dry)
    rain = wet * rng.exponential(1.0, (n_env, days)) * rng.uniform(4, 12, (n_env, 1))
    radiation = 20.0 + 5.0 * arc - 4.0 * wet + rng.normal(0.0, 2.0, (n_env, days))
    values = np.stack([temperature, rain, radiation], axis=-1)
    return EnvCovariates(
        np.arange(n_env), list(WEATHER), values, np.arange(1.0, days + 1), "simulation"
    )


def _stress_indices(covariates: EnvCovariates) -> np.ndarray:
    """Window means of :data:`STRESS_WINDOWS`, standardised over sites, ``(E, 3)``."""
    days = covariates.values.shape[1]
    columns = []
    for name, first, last in STRESS_WINDOWS:
        window = slice(round(first * days), round(last * days))
        columns.append(covariates.values[:, window, WEATHER.index(name)].mean(1))
    return _standardise(np.stack(columns, axis=1))


def _genetic_values(
    qtl_alleles: np.ndarray,
    config: SimulationConfig,
    rng: np.random.Generator,
    stress: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True values from complete QTL genotypes ``(N, Q, P)``.

    Returns additive ``(N, E)``, dominance ``(N,)`` and epistasis ``(N,)``, each
    with sample variance equal to its share of the genetic variance. With
    ``stress`` ``(E, S)`` the environment-specific part of the additive values is
    ``sum_s stress[e, s] * sensitivity_s(i)``, each sensitivity an additive
    function of the QTL alleles.
    """
    n_qtl = qtl_alleles.shape[1]
    e, k = config.n_environments, config.n_alleles
    dosage = np.stack(
        [(qtl_alleles == a).sum(-1) for a in range(1, k + 1)], axis=-1
    ).astype(np.float64)  # (N, Q, A)
    dominance_share = config.dominance_variance if config.ploidy > 1 else 0.0
    additive_share = 1.0 - dominance_share - config.epistasis_variance

    # environment effects = shared effects + independent deviations, mixed so that
    # additive values correlate by gxe_correlation across environments
    shared = _standardise(
        dosage.reshape(len(dosage), -1) @ rng.standard_normal(n_qtl * k)
    )
    if stress is None:
        deviations = _standardise(
            np.einsum("nqa,eqa->ne", dosage, rng.standard_normal((e, n_qtl, k)))
        )
    else:  # reaction norms: (N, S) sensitivities times the (E, S) stress indices
        slopes = dosage.reshape(len(dosage), -1) @ rng.standard_normal(
            (n_qtl * k, stress.shape[1])
        )
        deviations = _standardise(slopes) @ stress.T / math.sqrt(stress.shape[1])
    rho = config.gxe_correlation
    mixed = math.sqrt(rho) * shared[:, None] + math.sqrt(1 - rho) * deviations
    additive = _standardise(mixed) * math.sqrt(additive_share)

    heterozygous = (qtl_alleles.min(-1) != qtl_alleles.max(-1)).astype(np.float64)
    dominance = _standardise(heterozygous @ rng.standard_normal(n_qtl))
    dominance *= math.sqrt(dominance_share)

    # one random pair of distinct QTL per QTL; product of centred allele-1 dosages
    first = rng.integers(n_qtl, size=n_qtl)
    second = (first + rng.integers(1, n_qtl, size=n_qtl)) % n_qtl
    centred = dosage[..., 0] - dosage[..., 0].mean(0)
    pairs = centred[:, first] * centred[:, second]
    epistasis = _standardise(pairs @ rng.standard_normal(n_qtl))
    epistasis *= math.sqrt(config.epistasis_variance)
    return additive, dominance, epistasis


def _noise(genetic: np.ndarray, h2: float, rng: np.random.Generator) -> np.ndarray:
    """Residuals ``(N, E)`` making var(g) / (var(g) + var(e)) = ``h2`` exactly.

    Gaussian draws are centred, made orthogonal to each environment's genetic
    values and rescaled, so the sample heritability equals the requested one.
    """
    noise = rng.standard_normal(genetic.shape)
    noise -= noise.mean(0)
    g = genetic - genetic.mean(0)
    noise -= g * (g * noise).sum(0) / (g * g).sum(0)
    target = genetic.var(0) * (1 - h2) / h2
    return noise * np.sqrt(target / noise.var(0))


def _mask_missing(
    alleles: np.ndarray, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Copy of ``alleles`` ``(N, M, P)`` with a share ``rate`` of copies uncalled.

    Most missing copies come from wholly uncalled genotypes, the rest (ploidy > 1)
    from single uncalled copies; each locus is re-sorted so ``MISSING`` comes first.
    """
    n, m, p = alleles.shape
    whole = rate if p == 1 else WHOLE_GENOTYPE_SHARE * rate
    single = (rate - whole) / (1 - whole)
    mask = (rng.random((n, m, 1), dtype=np.float32) < whole) | (
        rng.random((n, m, p), dtype=np.float32) < single
    )
    out = alleles.copy()
    out[mask] = MISSING
    out.sort(axis=-1)
    return out


def write_simulation(data: SimulatedData, out) -> list[str]:
    """Write a simulation as the tables the commands read: ``chroms``, ``markers``,
    ``phenotypes``, ``truth``, ``qtl`` (``marker, qtl`` 0/1, usable as
    ``--marker-weights`` or ``--annotations``), with fixed effects
    ``fixed_effects`` (their true values) and, with weather, ``covariates``
    (``.tsv`` each, in ``out``); returns the names written."""
    out = Path(out)
    genotypes = data.genotypes
    io.write_chroms(genotypes.markers, out / "chroms.tsv")
    io.write_markers(genotypes, out / "markers.tsv")
    io.write_phenotypes(data.phenotypes, out / "phenotypes.tsv")
    io.write_table(data.truth, out / "truth.tsv")
    is_qtl = np.zeros(genotypes.n_markers, dtype=np.int64)
    is_qtl[data.qtl] = 1
    qtl = pd.DataFrame({"marker": genotypes.markers.names, "qtl": is_qtl})
    io.write_table(qtl, out / "qtl.tsv")
    written = ["chroms", "markers", "phenotypes", "truth", "qtl"]
    if data.fixed_effects:
        effects = pd.DataFrame(
            {"effect": list(data.fixed_effects), "value": data.fixed_effects.values()}
        )
        io.write_table(effects, out / "fixed_effects.tsv", float_format="%.6f")
        written.append("fixed_effects")
    if data.covariates is not None:
        io.write_covariates(data.covariates, out / "covariates.tsv")
        written.append("covariates")
    return written
