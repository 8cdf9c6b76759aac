"""The additive path of a phenotype model: GBLUP or RKHS per environment, fitted
through the baselines package before the network trains (the network then learns
what the path misses out of sample)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ..baselines import (
    Kernel,
    WeightedGBLUP,
    additive_effects,
    kernel_columns,
    kernel_effects,
    kernel_features,
    mixed_weights,
    relationship_mixes,
)
from ..data import Genotypes, genotype_batches
from ..device import model_device
from ..nn.heads import GaussianEffects, MarkerEffects
from ..tasks.phenotype import Records, Scaling


def fit_additive(
    additive: MarkerEffects | GaussianEffects,
    genotypes: Genotypes,
    records: Records,
    scaling: Scaling,
    frequencies: np.ndarray,
    kept: np.ndarray,
    prior: np.ndarray | None,
    relationships: list[tuple[float, Kernel]],
) -> tuple[np.ndarray, float]:
    """Set the additive path: per block, REML GBLUP (``MarkerEffects``) or RKHS
    (``GaussianEffects``) on the individuals with a record (their mean response,
    scaled).

    ``relationships`` are the :func:`~gperceiver.baselines.relationship_mixes` of
    the individuals ``kept`` (``records.rows`` come first) for ``prior``, as
    ``(mix, Kernel)``: :class:`~gperceiver.baselines.WeightedGBLUP` chooses the
    mix (highest restricted likelihood summed over blocks, the first on a tie).
    Returns the leave-one-out predictions (N, E) of the records (NaN where none):
    what the additive path predicts for an individual it was not fitted on; and
    the mix.
    """
    gaussian = isinstance(additive, GaussianEffects)
    targets = {}  # block -> (rows of kept with a record, their scaled responses)
    for environment in np.flatnonzero(records.weight.sum(0) > 0):
        seen = records.weight[:, environment] > 0
        mean, sd = scaling.mean[environment], scaling.sd[environment]
        targets[environment] = (
            np.flatnonzero(seen),
            (records.response[seen, environment] - mean) / sd,
        )

    selection = WeightedGBLUP(relationships, gaussian).select(list(targets.values()))
    mix, relationship = selection.mix_, selection.relationship_.matrix
    weights = None if prior is None else mixed_weights(prior, mix)
    if gaussian:
        keep, column_scale = kernel_columns(frequencies, genotypes.ploidy, weights)
        features = kernel_features(
            genotypes.subset(individuals=kept), frequencies, keep, column_scale
        )
        additive.set_data(features, keep, frequencies, column_scale)
    loo = np.full(records.response.shape, np.nan)
    # blocks recorded on the same individuals (every line in every environment)
    # share their Gaussian kernels and eigendecompositions
    shared_kernels: dict[bytes, dict] = {}
    for environment, (rows, y) in targets.items():
        part = genotypes.subset(individuals=kept[rows])
        options = {
            "marker_weights": weights,
            "relationship": relationship[np.ix_(rows, rows)],
        }
        if gaussian:
            kernels = shared_kernels.setdefault(rows.tobytes(), {})
            fit = kernel_effects(
                part, y, frequencies, **options, features=features[rows],
                kernels=kernels,
            )  # fmt: skip
            additive.set_environment(environment, rows, fit)
        else:
            fit = additive_effects(part, y, frequencies, **options)
            additive.set_environment(
                environment, fit.intercept, fit.effects, frequencies, genotypes.ploidy
            )
        loo[rows, environment] = fit.loo_predictions
    return loo, mix


@torch.no_grad()
def additive_offsets(
    additive, genotypes: Genotypes, rows: np.ndarray, batch_size=256
) -> torch.Tensor:
    """The additive path's outputs (N, E) for genotype ``rows``, on its device."""
    device = model_device(additive)
    marker_idx = torch.arange(genotypes.n_markers, device=device)
    batches = genotype_batches(genotypes, rows, batch_size, device)
    return torch.cat([additive(alleles, marker_idx) for _, alleles in batches])


@dataclass
class AdditivePath:
    """The additive path of one training group, fitted once for all ensemble
    members (it depends on the records only)."""

    trained: dict[str, torch.Tensor]  # state fitted on the training records
    # (N, E) targets' offsets over train.join(val) rows: leave-one-out values for
    # training records, the path's predictions for validation ones
    offset: torch.Tensor
    final: dict[str, torch.Tensor]  # state refitted on training + validation records
    mix: float | None  # prior weight mix of the final fit (None: no prior)


def fit_additive_path(
    additive: MarkerEffects | GaussianEffects,
    genotypes: Genotypes,
    train: Records,
    val: Records | None,
    scaling: Scaling,
    prior: np.ndarray | None,
) -> AdditivePath:
    """Fit ``additive`` (a model's additive path, left in its final state)."""
    both = train.join(val)
    frequencies = genotypes.allele_frequencies(both.rows)
    kept = both.rows
    relationships = [
        (mix, Kernel(relationship, memory=0))
        for mix, relationship in relationship_mixes(
            genotypes.subset(individuals=kept), frequencies, prior
        )
    ]  # computed once for both fits, every block and every mix
    fit = partial(
        fit_additive, additive, genotypes, scaling=scaling, frequencies=frequencies,
        kept=kept, prior=prior, relationships=relationships,
    )  # fmt: skip

    def state():
        return {k: v.clone() for k, v in additive.state_dict().items()}

    loo, mix = fit(train)
    trained = state()
    offset = additive_offsets(additive, genotypes, both.rows)  # (N, E)
    seen = ~np.isnan(loo)  # training records get their leave-one-out value
    offset[: len(loo)][torch.from_numpy(seen)] = torch.from_numpy(loo[seen]).float()
    if val is not None:
        _, mix = fit(both)
    return AdditivePath(trained, offset, state(), None if prior is None else mix)
