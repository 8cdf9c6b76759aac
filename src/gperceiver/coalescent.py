"""Markers from the coalescent with recombination (msprime): realistic linkage
disequilibrium and allele frequencies, any ploidy, multi-allelic sites from a
finite-sites ``k``-allele mutation model. Used by :mod:`gperceiver.simulate`.

Shape letters: N individuals, M markers, P ploidy.
"""

from __future__ import annotations

import math
from typing import Protocol

import msprime
import numpy as np
import tskit

from .data import MarkerMap


class CoalescentSettings(Protocol):
    """What the coalescent reads of :class:`gperceiver.simulate.SimulationConfig`
    (its fields document units and defaults)."""

    n_individuals: int
    n_markers: int
    n_chromosomes: int
    ploidy: int
    n_alleles: int
    population_size: float
    mutation_rate: float
    recombination_rate: float
    chromosome_length_bp: int
    site_spacing_bp: int | None
    min_maf: float


# Mean mutations per candidate site when multi-allelic sites are wanted: high enough
# that recurrent mutation often leaves three or more alleles at a site.
MUTATIONS_PER_SITE = 1.5
# Sites decoded from a tree sequence at once; bounds memory to batch x haplotypes.
DECODE_BATCH = 2048


def simulate_markers(
    config: CoalescentSettings, rng: np.random.Generator
) -> tuple[np.ndarray, MarkerMap]:
    """Allele ids ``(N, M, P)`` uint8 of ``config.n_markers`` markers spread evenly
    over ``config.n_chromosomes`` simulated chromosomes, and their map (names
    ``chr<i>_<bp>``, positions in bp), markers in map order."""
    spacing = _site_spacing(config)
    c = config.n_chromosomes
    per_chrom = np.full(c, config.n_markers // c)
    per_chrom[: config.n_markers % c] += 1
    chrom_names = [f"chr{i + 1}" for i in range(c)]
    pieces = [
        _simulate_chromosome(config, name, int(n), spacing, rng)
        for name, n in zip(chrom_names, per_chrom, strict=True)
    ]
    alleles = np.concatenate([a for a, _ in pieces], axis=1)
    pos = np.concatenate([p for _, p in pieces])
    labels = np.repeat(chrom_names, per_chrom)
    marker_names = [f"{ch}_{p}" for ch, p in zip(labels, pos, strict=True)]
    markers, order = MarkerMap.from_columns(labels, marker_names, pos)
    alleles = alleles[:, order]
    return alleles, markers


def _site_spacing(config: CoalescentSettings) -> int:
    """Bp between candidate sites (see ``SimulationConfig.site_spacing_bp``)."""
    if config.site_spacing_bp is not None:
        return config.site_spacing_bp
    if config.n_alleles == 2:
        return 1
    # Expected total branch length of the sample's genealogy, in generations:
    # 2 * H(n - 1) coalescent units of ploidy * population_size generations.
    n = config.n_individuals * config.ploidy
    harmonic = float(np.sum(1.0 / np.arange(1, n)))
    tree_length = 2 * harmonic * config.ploidy * config.population_size
    return max(1, round(MUTATIONS_PER_SITE / (config.mutation_rate * tree_length)))


def _k_allele_model(k: int) -> msprime.MatrixMutationModel:
    """Finite-sites model with ``k`` states; a mutation picks another at random."""
    transition = (np.ones((k, k)) - np.eye(k)) / (k - 1)
    return msprime.MatrixMutationModel(
        alleles=[str(i) for i in range(k)],
        root_distribution=np.full(k, 1.0 / k),
        transition_matrix=transition,
    )


def _simulate_chromosome(
    config: CoalescentSettings,
    name: str,
    n_sites: int,
    spacing: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Markers of one chromosome: allele ids ``(N, n_sites, P)`` and bp ``(n_sites,)``.

    Ids ``1..k`` rank a site's alleles by decreasing frequency; copies are sorted
    ascending. Sites with the most common alleles are preferred, so multi-allelic
    sites come first when ``n_alleles > 2``.
    """
    ancestry_seed, mutation_seed = rng.integers(1, 2**31 - 1, size=2)
    ts = msprime.sim_ancestry(
        samples=config.n_individuals,
        ploidy=config.ploidy,
        population_size=config.population_size,
        sequence_length=math.ceil(config.chromosome_length_bp / spacing),
        recombination_rate=config.recombination_rate * spacing,
        discrete_genome=True,
        random_seed=int(ancestry_seed),
    )
    ts = msprime.sim_mutations(
        ts,
        rate=config.mutation_rate * spacing,
        model=_k_allele_model(config.n_alleles),
        discrete_genome=True,
        random_seed=int(mutation_seed),
    )
    k = config.n_alleles
    batches = np.array_split(
        np.arange(ts.num_sites), max(1, math.ceil(ts.num_sites / DECODE_BATCH))
    )
    counts = np.concatenate([_state_counts(_decode(ts, ids), k) for ids in batches])
    freq = counts / (config.n_individuals * config.ploidy)
    n_common = ((counts > 0) & (freq >= config.min_maf)).sum(1)
    n_eligible = int((n_common >= 2).sum())
    if n_eligible < n_sites:
        raise ValueError(
            f"{name}: only {n_eligible} sites segregate with minor allele frequency"
            f" >= {config.min_maf} but {n_sites} markers are needed; increase"
            " mutation_rate, chromosome_length_bp or population_size (or lower"
            " n_markers, min_maf or site_spacing_bp)"
        )
    priority = np.lexsort((rng.random(ts.num_sites), -n_common))
    chosen = np.sort(priority[:n_sites])

    states = _decode(ts, chosen).astype(np.intp)  # (n_sites, haplotypes)
    by_frequency = np.argsort(-counts[chosen], axis=1, kind="stable")
    ids = np.empty_like(by_frequency)
    np.put_along_axis(ids, by_frequency, np.arange(1, k + 1)[None, :], axis=1)
    allele_ids = np.take_along_axis(ids, states, axis=1)
    # haplotypes grouped by individual: ploidy consecutive columns each
    owner = ts.nodes_individual[ts.samples()]
    allele_ids = allele_ids[:, np.argsort(owner, kind="stable")]
    alleles = allele_ids.reshape(n_sites, config.n_individuals, config.ploidy)
    alleles = np.sort(alleles.transpose(1, 0, 2), axis=-1).astype(np.uint8)
    pos = ts.sites_position[chosen].astype(np.int64) * spacing + 1
    return alleles, pos


def _decode(ts: tskit.TreeSequence, site_ids: np.ndarray) -> np.ndarray:
    """State indices of the given sites, ``(sites, haplotypes)`` uint8."""
    drop = np.ones(ts.num_sites, dtype=bool)
    drop[site_ids] = False
    subset = ts.delete_sites(np.flatnonzero(drop), record_provenance=False)
    return subset.genotype_matrix().astype(np.uint8)


def _state_counts(states: np.ndarray, k: int) -> np.ndarray:
    """Haplotypes carrying each of ``k`` states per site, ``(sites, k)`` int64."""
    return np.stack([(states == s).sum(1) for s in range(k)], axis=1)
