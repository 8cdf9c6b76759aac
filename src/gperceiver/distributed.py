"""Multi-process training under ``torchrun``: process group, rank and the one writer.

``torchrun --nproc_per_node N -m gperceiver pretrain|finetune ...`` starts N copies
of the command with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` set. :func:`session`
joins them into one process group: NCCL when the command's ``--device`` is a
CUDA device (each process on the GPU of its ``LOCAL_RANK``), gloo on the CPU. The
:class:`~gperceiver.train.Trainer` then gives each rank a slice of every global
batch, and :class:`torch.nn.parallel.DistributedDataParallel` averages gradients.
Rank 0 is the only writer: the others write into a private temporary directory
that is removed at the end, so outputs are those of a single process.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from .device import as_device, process_group_backend


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the current process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


@contextmanager
def session(outputs: list[str] | None = None, args=None):
    """Join the ``torchrun`` process group for the body (nothing without torchrun).

    On ranks other than 0 the ``args`` attributes named in ``outputs`` (output
    paths) are pointed into a temporary directory, and stdout is silenced. The
    backend follows ``args.device`` (NCCL on CUDA, gloo on the CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield
        return
    device = as_device(getattr(args, "device", None))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on this one
    dist.init_process_group(process_group_backend(device))
    finished = False
    try:
        rank = dist.get_rank()
        if rank == 0 or args is None:
            yield
        else:
            with (
                tempfile.TemporaryDirectory(prefix=f"gperceiver-rank{rank}-") as tmp,
                open(os.devnull, "w") as quiet,
            ):
                for name in outputs or ():
                    value = getattr(args, name, None)
                    if value:
                        setattr(args, name, str(Path(tmp) / Path(value).name))
                saved, sys.stdout = sys.stdout, quiet
                try:
                    yield
                finally:
                    sys.stdout = saved
        finished = True
    finally:
        if finished:  # a failed rank must not wait for the others
            dist.barrier()
        dist.destroy_process_group()


def all_mean(values: list[float]) -> list[float]:
    """Mean of each value over the ranks (the values themselves without a group)."""
    rank, world = rank_and_world()
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return (tensor / world).tolist()


def _collective_device() -> torch.device:
    """Where the tensors of a collective must be: NCCL takes CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (tensors in it should be on the CPU: a
    CUDA tensor arrives on the device index it left)."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
