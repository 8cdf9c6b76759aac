"""The finetuning pipeline: resolve settings -> prepare data -> build and train
every member -> save."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..baselines import (
    FixedEffects,
    FixedPart,
    Kernel,
    check_fixed_columns,
    column_list,
    fit_fixed_part,
)
from ..data import EnvCovariates, Genotypes, MarkerInputs, Phenotypes
from ..nn.heads import PhenotypeModel
from .inputs import prepare_data
from .save import save_run
from .settings import complete_settings, resolve_settings
from .training import train_members


def finetune(
    phenotypes: Phenotypes,
    genotypes: Genotypes,
    out,
    params: dict | None = None,
    typed: dict | None = None,
    pretrained=None,
    cv=None,
    covariates: EnvCovariates | None = None,
    marker_inputs: MarkerInputs | None = None,
    resume: bool = True,
    feature_cache: dict | None = None,
    device=None,
) -> list[PhenotypeModel]:
    """Train phenotype model(s) and save them to ``out``; returns the ensemble members.

    ``params``/``typed`` are flat dicts of
    :class:`~gperceiver.nn.perceiver.PerceiverConfig`,
    :class:`~gperceiver.nn.heads.HeadConfig`, :class:`~gperceiver.train.TrainConfig`,
    :class:`~gperceiver.finetuning.settings.FinetuneSettings` and
    :class:`~gperceiver.marker_graph.GraphSettings` fields (and
    :class:`~gperceiver.nn.environment.EnvironmentConfig` ones with covariates);
    an LD graph uses the training individuals only. With ``pretrained`` (a
    pretrain output directory) the encoder architecture and weights, marker graph
    and annotations included, come from there. With ``covariates`` one joint
    :class:`~gperceiver.nn.environment.EnvironmentPhenotypeModel` per ensemble
    seed predicts every block that has covariates, including blocks without
    training records. With ``fixed`` / ``fixed_numeric`` settings the fixed effects
    are fitted first on the training records (:func:`absorb_fixed`), the network
    trains on the corrected responses and ``config.json`` keeps them. ``cv``
    names the fold that steers early stopping (else an inner split of the
    training records does). ``marker_inputs`` holds what the marker files the
    settings name (``marker_weights``, an edge-list ``marker_graph``,
    ``annotations``) contain, read by the caller
    (:func:`gperceiver.io.read_marker_inputs`): the library opens no input file.
    Members resume from their checkpoints in ``out`` when these hold the same run
    (``resume=False``: start afresh); another run's checkpoints are refused
    (:class:`~gperceiver.train.Trainer`). ``feature_cache``: a dict the caller
    keeps across runs on the same genotypes (``evaluate``: one per data set), in
    which a frozen pretrained encoder's features of every individual are computed
    once (:func:`~gperceiver.finetuning.training.frozen_features`). The members
    train on ``device`` (default the CPU; see :mod:`gperceiver.device`) and are
    returned there.
    """
    plan = resolve_settings(
        phenotypes, genotypes, params, typed, pretrained, covariates, marker_inputs
    )
    phenotypes, fixed = absorb_fixed(phenotypes, genotypes, plan.settings, cv)
    data = prepare_data(plan, phenotypes, genotypes, cv, covariates)
    plan = complete_settings(plan, genotypes, data)
    out = Path(out)
    members, layout = train_members(
        plan, data, genotypes, out, resume, feature_cache, device
    )
    labels = phenotypes.environment_labels
    save_run(out, plan, data, layout, genotypes, cv, labels, fixed)
    return members


def absorb_fixed(
    phenotypes: Phenotypes, genotypes: Genotypes, settings, cv=None
) -> tuple[Phenotypes, FixedPart | None]:
    """The fixed effects of ``settings.fixed`` / ``fixed_numeric`` fitted on the
    training records (every record, or those with ``cv`` other than the
    validation fold ``cv``) by the per-block REML GBLUP on VanRaden's G of
    ``genotypes`` (:func:`~gperceiver.baselines.fit_fixed_part`, as ``evaluate``
    fits a fold's), and the phenotypes with every response corrected for them;
    ``(phenotypes, None)`` without fixed effects. A column the table lacks is
    refused (:class:`~gperceiver.io.InputError` naming the option)."""
    spec = FixedEffects(
        column_list(settings.fixed), column_list(settings.fixed_numeric)
    )
    if not spec:
        return phenotypes, None
    check_fixed_columns(phenotypes.table, spec, phenotypes.source)
    train = phenotypes.table if cv is None else phenotypes.split(str(cv))[0]
    part = fit_fixed_part(train, Kernel.relationship(genotypes), spec)
    corrected = part.corrected(phenotypes.table)
    return dataclasses.replace(phenotypes, table=corrected), part
