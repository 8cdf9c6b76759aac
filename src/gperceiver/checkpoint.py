"""Saved models and training checkpoints: safetensors + JSON, never pickle.

A model directory holds ``config.json`` (with ``format_version``), ``model.safetensors``
and ``markers.tsv`` (the marker map the model was trained on). Every file is written
atomically, so a kill never leaves a half-written model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .data import MarkerMap
from .io import InputError, atomic_directory, atomic_path, read_chroms, write_chroms

FORMAT_VERSION = 2  # written; 2: the Gaussian additive path scales each column
READABLE_VERSIONS = (1, 2)  # read (format 1 is upgraded on load)


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def save_tensors(tensors: dict[str, torch.Tensor], path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)


def load_tensors(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_model(
    directory, model: torch.nn.Module, config: dict, markers: MarkerMap
) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``markers.tsv``.

    The files are staged beside ``directory`` and moved in with ``config.json``
    last (see :func:`~gperceiver.io.atomic_directory`): a directory without
    ``config.json`` holds no model, one with it holds a complete one.
    """
    with atomic_directory(directory, last="config.json") as staging:
        write_chroms(markers, staging / "markers.tsv")
        save_tensors(model.state_dict(), staging / "model.safetensors")
        write_json(
            {
                **config,
                "format_version": FORMAT_VERSION,
                "markers": markers.fingerprint(),
            },
            staging / "config.json",
        )


def load_model_config(directory) -> tuple[dict, MarkerMap]:
    """Read a model directory's config and marker map, checking the format version."""
    directory = Path(directory)
    path = directory / "config.json"
    if not path.exists():
        raise InputError(
            directory, None, "no config.json", "pass a directory written by gperceiver"
        )
    config = read_json(path)
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        raise InputError(
            path,
            "format_version",
            f"model format {version} is not supported "
            f"(this gperceiver reads {', '.join(map(str, READABLE_VERSIONS))})",
            "retrain the model with this version",
        )
    return config, read_chroms(directory / "markers.tsv")


def load_weights(directory, model: torch.nn.Module) -> torch.nn.Module:
    state = _upgrade(load_tensors(Path(directory) / "model.safetensors"))
    model.load_state_dict(state)
    return model


def _upgrade(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Format 1 -> 2: the Gaussian additive path's one ``denominator`` becomes a
    ``column_scale`` of ``1 / sqrt(denominator)`` for each kept column."""
    for key in [k for k in state if k.endswith("additive.denominator")]:
        prefix = key[: -len("denominator")]
        columns = len(state[prefix + "keep"])
        scale = state.pop(key).rsqrt().expand(columns).clone()
        state[prefix + "column_scale"] = scale
    return state


def check_markers(
    model_markers: MarkerMap, data_markers: MarkerMap, model_dir, data_path
) -> None:
    """Refuse input whose marker map differs from the one the model was trained on."""
    if model_markers.fingerprint() == data_markers.fingerprint():
        return
    ours, theirs = set(model_markers.names), set(data_markers.names)
    if ours != theirs:
        diff = sorted(ours ^ theirs)
        detail = f"{len(diff)} marker(s) differ, e.g. {diff[0]!r}"
    else:
        detail = "the same markers have other chromosomes or positions"
    raise InputError(
        data_path,
        None,
        f"marker map differs from the model's "
        f"({Path(model_dir) / 'markers.tsv'}): {detail}",
        "use the model's markers.tsv as the chroms file and the same marker columns",
    )


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split an optimizer state into tensors (for safetensors) and JSON scalars."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                scalars["state"].setdefault(str(index), {})[key] = value
    return tensors, scalars


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict, scalars: dict
) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entries in scalars["state"].items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


RUN_FILE = "run.json"  # what a command's --out directory holds (see claim_directory)


def claim_directory(directory, identity: dict, restart: bool = False) -> None:
    """Refuse an output directory that holds another run, before any work.

    ``identity`` maps names (``"methods"``, ``"phenotypes"``, ...) to anything
    :func:`~gperceiver.train.digest` hashes. A directory whose ``run.json`` holds
    other hashes is refused with one line naming the parts that differ, unless
    ``restart``, which deletes what the earlier run left (checkpoints included)
    and starts afresh; only a directory with a ``run.json`` is ever emptied.
    The claim is written at once, so a run killed later is resumed only by the
    same request.
    """
    from .train import digest

    directory = Path(directory)
    parts = {name: digest(value) for name, value in identity.items()}
    path = directory / RUN_FILE
    if directory.is_file():
        raise InputError(directory, None, "is a file", "give a directory for --out")
    if restart and path.exists():  # only a directory this function claimed
        for entry in directory.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    elif path.exists():
        held = read_json(path).get("identity", {})
        changed = [
            k for k in dict.fromkeys([*parts, *held]) if held.get(k) != parts.get(k)
        ]
        if changed:
            raise InputError(
                directory,
                None,
                f"holds a run with other {', '.join(changed)}",
                "rerun with --restart to replace it, or use another --out",
            )
    write_json({"identity": parts, "format_version": FORMAT_VERSION}, path)
