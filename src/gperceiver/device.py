"""Where tensors live: the ``--device`` choice, mixed precision and the process
group's backend.

``--device auto|cpu|cuda[:N]`` is resolved once, at the command line's edge
(:func:`resolve_device`); the library takes the resulting :class:`torch.device`
and builds every model on the CPU first (so a seed gives the same initial
weights on any device), then moves it there. Tasks and predictors put their
batches where the model is (:func:`model_device`). On CUDA forward passes run
under bfloat16 autocast (:func:`autocast`); on the CPU in float32, as before.
Checkpoints are written from CPU copies and read back onto the CPU, so a run
may be resumed, or a model used, on another device.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from itertools import chain

import torch

from .io import InputError

CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device a ``--device`` value names.

    ``auto`` (or None) is the CUDA device when one is present, else the CPU;
    ``cuda`` is the current CUDA device, under ``torchrun`` the one of the
    process's ``LOCAL_RANK``; ``cuda:N`` the N-th. Raises :class:`InputError`
    (naming ``--device`` and the fix) for another name, or CUDA where there is
    none. A :class:`torch.device` (already resolved) is returned as it is.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(name, torch.device):
        return name
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise InputError(
            "--device", None, f"{name!r} is not a device", f"give {CHOICES}"
        )
    if not torch.cuda.is_available():
        raise InputError(
            "--device",
            None,
            f"{name!r}: this machine has no CUDA device (or torch is a CPU build)",
            "use --device cpu (or auto)",
        )
    count = torch.cuda.device_count()
    if index:
        if int(index) >= count:
            raise InputError(
                "--device",
                None,
                f"{name!r}: only {count} CUDA device(s), numbered from 0",
                f"give cuda:0 .. cuda:{count - 1}",
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError(
                "--device",
                None,
                f"{name!r} would put every torchrun process on one GPU",
                "give --device cuda (each process takes its LOCAL_RANK's GPU)",
            )
        return torch.device("cuda", int(index))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= count:
        raise InputError(
            "--device",
            None,
            f"{name!r}: process {local} of this node has no GPU of its own "
            f"({count} CUDA device(s))",
            f"start at most {count} processes per node, or use --device cpu",
        )
    return torch.device("cuda", local)


def as_device(device: str | torch.device | None) -> torch.device:
    """A library argument as a device: None is the CPU (the library's default;
    the command line's is ``auto``)."""
    return torch.device("cpu") if device is None else resolve_device(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (the CPU if it has none)."""
    first = next(chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA (matmuls and attention in bf16, reductions and
    losses in float32); nothing on the CPU, whose results stay float32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def full_precision(device: torch.device):
    """Autocast switched off inside an autocast region (on CUDA; nothing on the
    CPU): for sums whose terms cancel, such as squared distances ``|z|^2 + |f|^2
    - 2 z.f``, which bfloat16 would round to noise."""
    if device.type == "cuda":
        return torch.autocast("cuda", enabled=False)
    return nullcontext()


def to_numpy(tensor: torch.Tensor):
    """A float32 (or integer) NumPy copy of ``tensor`` from any device and dtype."""
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.cpu().numpy()


def process_group_backend(device: torch.device) -> str:
    """``nccl`` for CUDA processes, ``gloo`` for CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"
