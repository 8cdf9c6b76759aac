"""A baseline model on disk (``gperceiver fit --out``, ``predict --model``): the
directory holds ``config.json`` (``kind: baseline``, ``format_version``, the method,
trait, environments with their fixed-effect levels and variance components),
``model.safetensors`` (float64 arrays) and ``markers.tsv``
(:class:`~gperceiver.baseline_model.BaselineModel` is what it holds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .baseline_model import BaselineModel, EnvironmentSolution
from .baselines import FixedDesign
from .checkpoint import load_arrays, read_json, save_arrays, write_json
from .io import InputError, atomic_directory, read_chroms, write_chroms
from .selection import COMPONENT_COLUMNS

BASELINE_FORMAT_VERSION = 1
KIND = "baseline"  # config.json "kind" of a baseline model directory


def is_baseline_model(directory) -> bool:
    """Whether ``directory`` holds a model written by :func:`save_baseline`."""
    path = Path(directory) / "config.json"
    return path.is_file() and read_json(path).get("kind") == KIND


def _component_records(frame: pd.DataFrame) -> list[dict]:
    rows = frame[["component", "value", "se"]].to_dict("records")
    return [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in rows
    ]


def save_baseline(model: BaselineModel, directory) -> None:
    """Write ``model`` to ``directory`` (staged, ``config.json`` last, so a
    directory with ``config.json`` holds a whole model). A directory that holds
    another kind of model is refused."""
    directory = Path(directory)
    if directory.is_file() or (
        (directory / "config.json").exists() and not is_baseline_model(directory)
    ):
        raise InputError(
            directory, None, "is a file or holds another kind of model",
            "give a new directory for --out",
        )  # fmt: skip
    arrays = {"frequencies": model.frequencies}
    environments = []
    for e, env in enumerate(model.environments):
        arrays[f"beta.{e}"] = env.beta
        arrays[f"solution.{e}"] = env.solution
        label = env.label.item() if hasattr(env.label, "item") else env.label
        environments.append(
            {
                "block": env.block,
                "label": label,
                "scale": env.scale,
                "fixed": env.design.to_dict(),
                "components": _component_records(env.components),
            }
        )
    if model.method == "rkhs":
        arrays.update(
            features=model.features,
            keep=model.keep.astype(np.uint8),
            column_scale=model.column_scale,
        )
    config = {
        "kind": KIND,
        "format_version": BASELINE_FORMAT_VERSION,
        "method": model.method,
        "trait": model.trait,
        "ploidy": model.ploidy,
        "n_alleles": model.n_alleles,
        "markers": model.markers.fingerprint(),
        "environments": environments,
        "info": model.info,
        "gperceiver_version": __version__,
    }
    with atomic_directory(directory, last="config.json") as staging:
        write_chroms(model.markers, staging / "markers.tsv")
        save_arrays(arrays, staging / "model.safetensors")
        write_json(config, staging / "config.json")


def load_baseline(directory) -> BaselineModel:
    """Read a model written by :func:`save_baseline` (refuses another kind or
    format version)."""
    directory = Path(directory)
    if not is_baseline_model(directory):
        raise InputError(
            directory, None, "holds no baseline model (no config.json of kind "
            "'baseline')", "pass a directory written by gperceiver fit",
        )  # fmt: skip
    config = read_json(directory / "config.json")
    if config.get("format_version") != BASELINE_FORMAT_VERSION:
        raise InputError(
            directory / "config.json", "format_version",
            f"baseline format {config.get('format_version')} is not supported "
            f"(this gperceiver reads {BASELINE_FORMAT_VERSION})",
            "refit the model with this version",
        )  # fmt: skip
    arrays = load_arrays(directory / "model.safetensors")
    environments = []
    for e, entry in enumerate(config["environments"]):
        frame = pd.DataFrame(entry["components"]).astype({"se": float})
        frame = frame.assign(method=config["method"], block=entry["label"], fold="all")
        environments.append(
            EnvironmentSolution(
                entry["block"], entry["label"], FixedDesign.from_dict(entry["fixed"]),
                arrays[f"beta.{e}"], arrays[f"solution.{e}"],
                frame[COMPONENT_COLUMNS], entry["scale"],
            )
        )  # fmt: skip
    rkhs = config["method"] == "rkhs"
    return BaselineModel(
        config["method"],
        read_chroms(directory / "markers.tsv"),
        config["ploidy"],
        config["n_alleles"],
        arrays["frequencies"],
        environments,
        config["trait"],
        features=arrays["features"] if rkhs else None,
        keep=arrays["keep"].astype(bool) if rkhs else None,
        column_scale=arrays["column_scale"] if rkhs else None,
        info=config.get("info", {}),
    )
