"""Saved models and training checkpoints: safetensors + JSON, never pickle.

A model directory holds ``config.json`` (with ``format_version``), ``model.safetensors``
and ``markers.tsv`` (the marker map the model was trained on). Every file is written
atomically, so a kill never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import MarkerMap
from .io import InputError, atomic_directory, atomic_path, read_chroms, write_chroms

# written; 2: the Gaussian additive path scales each column; 3: a finetuned
# model's config.json may hold "fixed_effects" (absent: none)
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # read (format 1 is upgraded on load)

if TYPE_CHECKING:  # torch loads where a tensor is saved or loaded, not on import
    import torch


def digest(value) -> str:
    """Short stable hash of nested dicts / lists of JSON values, arrays and tensors.

    >>> digest({"b": 1, "a": [0.5, "x"]}) == digest({"a": [0.5, "x"], "b": 1})
    True
    """
    h = hashlib.sha256()

    torch_module = sys.modules.get("torch")  # a tensor exists only if torch loaded

    def feed(v) -> None:
        if torch_module is not None and isinstance(v, torch_module.Tensor):
            v = v.detach().cpu()
            v = (v.float() if v.dtype == torch_module.bfloat16 else v).numpy()
        if isinstance(v, np.ndarray):
            h.update(f"array:{v.dtype.str}:{v.shape}".encode())
            h.update(np.ascontiguousarray(v).data)
        elif isinstance(v, dict):
            h.update(f"dict:{len(v)}".encode())
            for key in sorted(v, key=str):
                h.update(f"key:{key}".encode())
                feed(v[key])
        elif isinstance(v, list | tuple):
            h.update(f"list:{len(v)}".encode())
            for item in v:
                feed(item)
        else:
            h.update(json.dumps(v, sort_keys=True, default=str).encode())

    feed(value)
    return h.hexdigest()[:16]


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def save_tensors(tensors: dict[str, torch.Tensor], path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)


def load_tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def save_arrays(arrays: dict[str, np.ndarray], path) -> None:
    """Write numpy ``arrays`` as one safetensors file, atomically (no torch)."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp)


def load_arrays(path) -> dict[str, np.ndarray]:
    """The numpy arrays of a safetensors file (:func:`save_arrays`)."""
    from safetensors.numpy import load_file

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
    import torch

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


def claim_directory(directory, identity: dict, restart: bool = False) -> dict:
    """Refuse an output directory that holds another run, before any work.

    ``identity`` maps names (``"options"``, ``"phenotypes"``, ...) to anything
    :func:`digest` hashes. A directory whose ``run.json`` (written by
    :func:`record_directory` when a run ends) holds other hashes is refused with
    one line naming the parts that differ, unless ``restart``, which deletes what
    the earlier run left (checkpoints included); only a directory with a
    ``run.json`` is ever emptied. A path that is a file is refused. Returns the
    hashes for :func:`record_directory`. (A run killed before its end has no
    ``run.json``; its checkpoints carry their own identity, see
    :class:`~gperceiver.train.Trainer`.)
    """
    directory = Path(directory)
    parts = {name: digest(value) for name, value in identity.items()}
    path = directory / RUN_FILE
    if directory.is_file():
        raise InputError(directory, None, "is a file", "give a directory for --out")
    if restart and path.exists():  # only a directory a run recorded
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
    return parts


def record_directory(directory, parts: dict) -> None:
    """Write ``run.json``: the finished run's identity (see :func:`claim_directory`)."""
    write_json(
        {"identity": parts, "format_version": FORMAT_VERSION},
        Path(directory) / RUN_FILE,
    )
