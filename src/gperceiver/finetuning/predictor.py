"""A finetuned ensemble loaded back to predict, new environments included."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..baselines import FixedPart
from ..checkpoint import check_markers, load_model_config, load_weights
from ..data import EnvCovariates, Genotypes, genotype_batches
from ..device import as_device, autocast, model_device
from ..io import InputError
from ..nn.environment import EnvironmentConfig
from ..nn.heads import HeadConfig, PhenotypeModel
from ..nn.perceiver import PerceiverConfig
from ..tasks.phenotype import Scaling, predictions
from .model import _new_model, batch_copy
from .settings import TASK_NAME


@dataclass
class Predictor:
    """A finetuned ensemble ready to predict.

    ``layout[i]`` says which ensemble seed member ``i`` belongs to and which block it
    predicts (None: every block). ``fixed``: the fixed effects fitted before the
    network (None: none); :meth:`predict` gives the genetic part only.
    """

    members: list[PhenotypeModel]
    layout: list[dict]
    objective: str
    scaling: Scaling
    fixed: FixedPart | None = None

    @torch.no_grad()
    def predict(
        self, genotypes: Genotypes, rows=None, batch_size: int = 64
    ) -> np.ndarray:
        """Predictions (N, E, K) for genotype ``rows`` (default: all); K seeds.

        Blocks that no member predicts are NaN.
        """
        rows = np.arange(genotypes.n_individuals) if rows is None else np.asarray(rows)
        device = model_device(self.members[0])
        marker_idx = torch.arange(genotypes.n_markers, device=device)
        n_seeds = 1 + max(entry["seed_index"] for entry in self.layout)
        n_environments = self.members[0].head_config.n_environments
        out = np.full((len(rows), n_environments, n_seeds), np.nan)
        for model, entry in zip(self.members, self.layout, strict=True):
            model.eval()
            parts = []
            for part, alleles in genotype_batches(genotypes, rows, batch_size, device):
                copy = batch_copy(model, genotypes, part)  # from the saved panel
                with autocast(device):
                    outputs = model(alleles, marker_idx, copy)
                parts.append(predictions(self.objective, outputs, model, self.scaling))
            values = np.concatenate(parts) if parts else np.zeros((0, n_environments))
            columns = slice(None) if entry["block"] is None else entry["block"]
            out[:, columns, entry["seed_index"]] = values[:, columns]
        return out


def _new_environments(predictor: Predictor, covariates: EnvCovariates, config) -> None:
    """Give the predictor's models ``covariates`` for their blocks, growing the
    per-block tables for blocks the model never had (predicted like an environment
    without records: average centre and scale, no intercept of its own)."""
    standard = config["covariates"]
    names, n_times = standard["names"], standard["n_times"]
    source = covariates.source
    if list(covariates.names) != names:
        raise InputError(
            source,
            "line 1",
            f"covariate columns {list(covariates.names)} differ from the model's",
            f"use the columns the model was finetuned with, in order: {names}",
        )
    if covariates.values.shape[1] != n_times:
        raise InputError(
            source,
            None,
            f"{covariates.values.shape[1]} time points per block; the model was "
            f"finetuned with {n_times}",
            f"give every block the {n_times} time points of the training covariates",
        )
    values = (covariates.values - np.array(standard["mean"])) / np.array(standard["sd"])
    values = torch.as_tensor(values, dtype=torch.float32)
    environments = torch.as_tensor(covariates.environments)
    for model in predictor.members:
        model.set_covariates(environments, values)
    grown = predictor.members[0].head_config.n_environments - len(
        predictor.scaling.mean
    )
    centre, scale = standard["new_environment_scaling"]
    predictor.scaling = Scaling(
        np.concatenate([predictor.scaling.mean, np.full(grown, centre)]),
        np.concatenate([predictor.scaling.sd, np.full(grown, scale)]),
    )


def load_predictor(
    directory,
    genotypes: Genotypes | None = None,
    data_path=None,
    covariates: EnvCovariates | None = None,
    device=None,
) -> Predictor:
    """Load a finetune output directory onto ``device`` (default the CPU; the
    weights are read onto the CPU first, so a model trained on any device
    loads); checks the marker map of ``genotypes``.

    ``covariates`` (for a model finetuned with covariates) replace or add the
    covariates of their blocks, so environments never seen in training, with
    block ids beyond the model's, are predicted too.
    """
    directory = Path(directory)
    config, markers = load_model_config(directory)
    if config.get("task") != TASK_NAME:
        raise InputError(
            directory,
            None,
            f"holds a {config.get('task')!r} model, not a finetuned one",
            "pass the --out directory of gperceiver finetune",
        )
    if genotypes is not None:
        check_markers(markers, genotypes.markers, directory, data_path or "genotypes")
    model_cfg = PerceiverConfig.from_dict(config["model"])
    head = dict(config["head"])
    if "n_blocks" in head:  # written before environments were named so in code
        head["n_environments"] = head.pop("n_blocks")
    head_cfg = HeadConfig(**head)
    env_cfg = config.get("environment")
    env_cfg = None if env_cfg is None else EnvironmentConfig(**env_cfg)
    members = [
        load_weights(
            directory / entry["dir"],
            _new_model(
                model_cfg, head_cfg, env_cfg, markers, None, head_cfg.n_environments
            ),
        )
        for entry in config["members"]
    ]
    scaling = Scaling(
        np.array(config["scaling"]["mean"]), np.array(config["scaling"]["sd"])
    )
    fixed = config.get("fixed_effects")  # absent before format 3
    predictor = Predictor(
        members,
        config["members"],
        config["finetune"]["objective"],
        scaling,
        None if fixed is None else FixedPart.from_dict(fixed),
    )
    if covariates is not None:
        if config.get("covariates") is None:
            raise InputError(
                covariates.source,
                None,
                f"the model in {directory} was finetuned without covariates",
                "finetune with --covariates, or predict without them",
            )
        _new_environments(predictor, covariates, config)
    for model in predictor.members:  # after the covariates: set on the CPU
        model.to(as_device(device))
    return predictor


def model_environments(directory) -> list[str] | None:
    """The names of a finetuned model's blocks (``config.json`` key
    ``environments``; None when its phenotypes numbered the environments)."""
    config, _ = load_model_config(Path(directory))
    return config.get("environments")


def prediction_table(
    predictor: Predictor, genotypes: Genotypes, environments=None
) -> pd.DataFrame:
    """``name, block, prediction[, sd]`` for every individual x block; a model
    with fixed effects adds ``gebv`` (the genetic part) and predicts ``gebv`` plus
    the fixed part at the mean training levels and covariates of the block."""
    values = predictor.predict(genotypes)  # (N, E, K)
    n, e, k = values.shape
    environments = np.arange(e) if environments is None else np.asarray(environments)
    genetic = values[:, environments].mean(-1)  # (N, len(environments))
    fixed = np.zeros(len(environments))
    if predictor.fixed is not None:
        fixed = predictor.fixed.mean_values(environments)
    frame = pd.DataFrame(
        {
            "name": np.repeat(genotypes.names, len(environments)),
            "block": np.tile(environments, n),
            "prediction": (genetic + fixed[None, :]).ravel(),
        }
    )
    if predictor.fixed is not None:
        frame["gebv"] = genetic.ravel()
    if k > 1:
        frame["sd"] = values[:, environments].std(-1, ddof=1).ravel()
    return frame


def record_predictions(
    predictor: Predictor, genotypes: Genotypes, records: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """``(fixed, genetic)`` parts ``(k,)`` of ``records`` (``name`` of
    ``genotypes``, ``block`` codes of the model, the fixed-effect columns): the
    ensemble's mean genetic value of the individual in the block, and the fixed
    part of the record's levels and covariates (0 without fixed effects; a level
    unseen in training at the mean effect, with a warning counting them)."""
    rows = genotypes.index_of(records["name"])
    if (rows < 0).any():
        raise KeyError("records name individuals without genotypes")
    individuals, record_of = np.unique(rows, return_inverse=True)
    values = predictor.predict(genotypes, individuals).mean(-1)  # (n, E)
    genetic = values[record_of, records["block"].to_numpy()]
    if predictor.fixed is None:
        return np.zeros(len(records)), genetic
    return predictor.fixed.values(records), genetic
