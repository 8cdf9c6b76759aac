"""Finetuning step 2, prepare the data: records and their splits, response
scaling, environment covariates and the marker inputs (LD graph, annotations).

No leakage: scaling, the LD graph and the panel (with the panel option) use
training records only; the inner validation split steers early stopping only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import EnvCovariates, Genotypes, Phenotypes
from ..io import InputError
from ..marker_graph import graph_and_annotations
from ..nn.panel import PanelConfig
from ..pretraining import split_individuals
from ..tasks.phenotype import Records, Scaling
from .panel import PanelInput, fit_panel_input


def _records_split(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    cv,
    val_fraction,
    seed,
    n_environments: int | None = None,
    by_environment: bool = False,
):
    """Training and validation :class:`Records` (validation may be None).

    ``by_environment``: without ``cv``, hold out a share ``val_fraction`` of the
    blocks (at least one unless it is 0) instead of individuals.
    """
    n_environments = n_environments or phenotypes.n_environments
    if cv is None and by_environment:
        environments = phenotypes.environments
        n_held = round(val_fraction * len(environments))
        if val_fraction > 0 and len(environments) > 1:
            n_held = max(1, n_held)
        held = np.random.default_rng(seed).choice(environments, n_held, replace=False)
        is_held = phenotypes.table["block"].isin(held)
        train = Records.from_table(
            phenotypes.table[~is_held], genotypes, n_environments
        )
        if not n_held:
            return train, None
        return train, Records.from_table(
            phenotypes.table[is_held], genotypes, n_environments
        )
    if cv is not None:
        train_table, val_table = phenotypes.split(str(cv))
        if val_table.empty:
            known = phenotypes.folds() if phenotypes.has_cv else []
            folds = ", ".join(known) or "the table has no cv column"
            raise InputError(
                "--cv",
                None,
                f"no row of {phenotypes.source} has cv == {cv!r}",
                f"use one of the table's folds ({folds})",
            )
        train = Records.from_table(train_table, genotypes, n_environments)
        val = Records.from_table(val_table, genotypes, n_environments)
        return train, val
    records = Records.from_table(phenotypes.table, genotypes, n_environments)
    fit, held = split_individuals(len(records.rows), val_fraction, seed)
    return records.subset(fit), (records.subset(held) if len(held) else None)


def _only_environment(
    records: Records | None, environment: int | None
) -> Records | None:
    """Records with every other block blanked out (None: keep all)."""
    if records is None or environment is None:
        return records
    keep = np.zeros(records.response.shape[1], dtype=bool)
    keep[environment] = True
    present = records.weight[:, environment] > 0
    response = np.where(keep, records.response, np.nan)[present]
    weight = np.where(keep, records.weight, 0.0)[present]
    return Records(records.rows[present], response, weight)


# -- environment covariates (used only when covariates are given) -------------------
def _environment_inputs(covariates: EnvCovariates) -> dict:
    """Standardised covariates per block slot: ``values`` (E, T, C) float32 tensor
    (zeros for blocks without covariates), ``has`` (E,) bool, and ``standard``,
    the centre and scale per covariate kept in the model's config.

    Each covariate is centred and scaled over every block and time point that has
    it (no response is used, like a relationship matrix from all genotypes).
    """
    values = covariates.values
    mean = values.mean((0, 1))
    sd = values.std((0, 1))
    sd = np.where(sd > 0, sd, 1.0)
    standard = {
        "names": list(covariates.names),
        "n_times": values.shape[1],
        "mean": mean.tolist(),
        "sd": sd.tolist(),
    }
    n_environments = int(covariates.environments.max()) + 1
    full = np.zeros((n_environments, *values.shape[1:]), dtype=np.float32)
    full[covariates.environments] = (values - mean) / sd
    has = np.zeros(n_environments, dtype=bool)
    has[covariates.environments] = True
    return {
        "values": torch.from_numpy(full),
        "has": torch.from_numpy(has),
        "standard": standard,
    }


def _environment_scaling(train: Records, held: Records | None) -> Scaling:
    """Per-block scaling from the training records and the ``held`` out inner
    validation environments (training data of the caller, so that their loss
    measures within-environment fit); blocks without records get the average
    centre and scale (:func:`_average_scaling`), so their predictions land on the
    usual scale."""
    both = train.join(held)
    scaling = Scaling.fit(both)
    seen = both.weight.sum(0) > 0
    scaling.mean[~seen], scaling.sd[~seen] = _average_scaling(scaling, seen)
    return scaling


def _average_scaling(scaling: Scaling, seen: np.ndarray) -> tuple[float, float]:
    """Centre and scale for an environment without records: the averages over the
    ``seen`` (E,) blocks."""
    return float(scaling.mean[seen].mean()), float(scaling.sd[seen].mean())


@dataclass
class FinetuneData:
    """What a finetuning run trains on, once its settings are resolved."""

    train: Records
    val: Records | None  # inner validation (or the cv fold): early stopping
    # the held-out training environments of an inner environment split, else None
    held: Records | None
    scaling: Scaling  # per block, from training records only
    # with covariates: values (E, T, C), has (E,), standard (see _environment_inputs)
    environment: dict | None
    graph: object | None  # MarkerGraph from the training individuals, if asked for
    annotations: object | None  # MarkerAnnotations, if asked for
    # with the panel option: the panel (training individuals), its fitted
    # attention and every record's copies (finetuning.panel.PanelInput)
    panel: PanelInput | None = None


def prepare_data(
    plan,
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    cv=None,
    covariates: EnvCovariates | None = None,
) -> FinetuneData:
    """Records split for training and early stopping (``cv``: that fold
    validates), scaling and marker inputs, for a
    :class:`~gperceiver.finetuning.settings.FinetunePlan`."""
    settings, n_environments = plan.settings, plan.n_environments
    environment = None if covariates is None else _environment_inputs(covariates)
    by_environment = settings.val_split == "environments"
    train, val = _records_split(
        phenotypes,
        genotypes,
        cv,
        settings.val_fraction,
        plan.train.seed,
        n_environments,
        by_environment,
    )
    held = val if by_environment and cv is None else None  # training environments
    graph = annotations = None
    if plan.pretrained is None:  # a pretrained encoder brings its own
        graph, annotations = graph_and_annotations(
            plan.graph, genotypes, train.rows, plan.marker_inputs
        )
    if settings.objective not in ("mse", "huber"):
        scaling = Scaling.identity(n_environments)
    elif environment is None:
        scaling = Scaling.fit(train)
    else:
        scaling = _environment_scaling(train, held)
    if environment is not None:
        seen = train.join(held).weight.sum(0) > 0
        environment["standard"]["new_environment_scaling"] = _average_scaling(
            scaling, seen
        )
    panel = None
    if plan.head.panel:  # the panel: the training individuals only
        panel = fit_panel_input(
            genotypes,
            train.rows,
            train.join(val).rows,
            PanelConfig(block=plan.head.panel_window, layers=plan.head.panel_layers),
            settings.panel_fit_steps,
            plan.train.seed,
        )
    return FinetuneData(
        train, val, held, scaling, environment, graph, annotations, panel
    )
