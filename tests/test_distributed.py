"""Two-process training (gloo, CPU) against one process with the same global batch."""

import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from gperceiver.checkpoint import load_tensors
from gperceiver.cli import main
from gperceiver.train import TrainConfig, Trainer

# Loss curves of the masked-marker task under torchrun may differ from one process
# only by target-sampling noise (each rank draws targets for its half of the batch):
# every logged loss within this relative tolerance.
CURVE_TOLERANCE = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo_group(rank: int, world: int, prefix: str) -> None:
    """Join a gloo group through a file store (no TCP store thread on rank 0 that
    could go away while another rank still talks to it)."""
    store = f"file://{prefix}-store"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)


def leave_gloo_group() -> None:
    """Wait for every rank, then leave: a rank that tears down first can abort the
    others (``terminate called without an active exception``)."""
    dist.barrier()
    dist.destroy_process_group()


def end_worker() -> None:
    """End a spawned worker whose results are written: exit at once, without the
    C++ teardown, where gloo still aborted a worker now and then after the group
    was left (SIGABRT, ``terminate called without an active exception``; 2 of 45
    spawns of the batch-norm test, 0 of 45 with this exit)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class LeastSquares:
    """Deterministic task: mean squared error of a linear model, one term per row."""

    def __init__(self, seed=0, n=64, d=5):
        rng = np.random.default_rng(seed)
        self.x = torch.from_numpy(rng.normal(size=(n, d))).float()
        self.y = (
            self.x @ torch.arange(1.0, d + 1)
            + 0.1 * torch.from_numpy(rng.normal(size=n)).float()
        )

    def loss(self, model, rows, generator):
        rows = torch.from_numpy(np.asarray(rows))
        err = model(self.x[rows]).squeeze(-1) - self.y[rows]
        return (err**2).mean(), {"mae": float(err.detach().abs().mean())}

    def evaluate(self, model, rows, train_rows):
        loss, metrics = self.loss(model, rows, None)
        return {"loss": float(loss), **metrics}


CONFIG = TrainConfig(
    lr=0.3, warmup_steps=2, batch_size=16, epochs=4, eval_every=2, progress=False
)


def fit(directory):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    Trainer(model, LeastSquares(), CONFIG, directory).fit(
        np.arange(48), np.arange(48, 64)
    )
    return model


def _worker(rank, world, directory):
    torch.set_num_threads(1)
    join_gloo_group(rank, world, directory)
    try:
        model = fit(directory if rank == 0 else f"{directory}-unused-{rank}")
        save_file(model.state_dict(), f"{directory}-weights-{rank}.safetensors")
    finally:
        leave_gloo_group()
    end_worker()


def test_trainer__two_gloo_processes_equal_one_process(tmp_path):
    single = fit(tmp_path / "single")
    mp.spawn(_worker, args=(2, str(tmp_path / "ddp")), nprocs=2)
    weights = [load_tensors(tmp_path / f"ddp-weights-{r}.safetensors") for r in (0, 1)]
    # gradients are averaged: both ranks hold the weights of the one-process run
    for k, v in single.state_dict().items():
        assert torch.equal(weights[0][k], weights[1][k])
        torch.testing.assert_close(weights[0][k], v, rtol=1e-5, atol=1e-6)
    a = pd.read_csv(tmp_path / "single" / "metrics.csv")
    b = pd.read_csv(tmp_path / "ddp" / "metrics.csv")
    # the starting point's validation, then 3 steps per epoch, one evaluation every 2
    assert len(a) == len(b) == 7
    np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=1e-5)
    a, b = a[a["step"] > 0], b[b["step"] > 0]
    for column in ["train_loss", "train_mae", "train_grad_norm"]:
        np.testing.assert_allclose(b[column], a[column], rtol=1e-5)
    assert a["train_loss"].iloc[-1] < 0.5 * a["train_loss"].iloc[0]
    assert not (tmp_path / "ddp-unused-1").exists()  # rank 1 wrote nothing


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    args = ["simulate", "--out", str(out), "--individuals", "100", "--markers", "200"]
    args += ["--chromosomes", "2", "--qtl", "10", "--seed", "4"]
    assert main(args) == 0
    return out


def test_torchrun__pretrain_follows_the_single_process_loss_curve(cohort, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(
        '{"eval_every": 4, "val_fraction": 0.3, "warmup_steps": 4, '
        '"target_fraction": 0.3}'
    )
    common = [str(cohort / "chroms.tsv"), str(cohort / "markers.tsv")]
    common += ["--width", "16", "--latents", "4", "--encode-iters", "1", "--lr", "0.01"]
    common += ["--batch-size", "32", "--max-steps", "24", "--no-progress"]
    common += ["--params", str(params)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    python = [sys.executable]
    one = subprocess.run(
        [
            *python,
            "-m",
            "gperceiver",
            "pretrain",
            *common,
            "--out",
            str(tmp_path / "one"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    torchrun = [*python, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(free_port())]
    two = subprocess.run(
        [
            *torchrun,
            "-m",
            "gperceiver",
            "pretrain",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("wrote the pretrained model") == 1  # rank 0 speaks
    # the same results contract: the same files, one writer
    listing = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == listing
    a = pd.read_csv(tmp_path / "one" / "metrics.csv")
    b = pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert (a["step"] == b["step"]).all() and len(a) == 7  # step 0 + 6 evaluations
    np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=CURVE_TOLERANCE)
    a, b = a[a["step"] > 0], b[b["step"] > 0]
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=CURVE_TOLERANCE)
    # the curve falls by more than the tolerance, so agreement is informative
    assert (
        a["train_loss"].iloc[-1] < (1 - 3 * CURVE_TOLERANCE) * a["train_loss"].iloc[0]
    )
    wa = load_tensors(tmp_path / "one" / "model.safetensors")
    wb = load_tensors(tmp_path / "two" / "model.safetensors")
    assert wa.keys() == wb.keys()
