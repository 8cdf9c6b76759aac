"""A resume never mixes runs: checkpoints carry a hash of everything that shapes a
run, a resume with another identity is refused naming what changed, and
``--restart`` starts afresh."""

import numpy as np
import pytest
import torch

from gperceiver.cli import main
from gperceiver.io import InputError, read_chroms, read_markers, write_markers
from gperceiver.train import TrainConfig, Trainer, digest
from pretrain_helpers import SLOW_STEPS


class Mean:
    """Deterministic task: squared error of one scalar against fixed targets."""

    def __init__(self, y):
        self.y = torch.as_tensor(y, dtype=torch.float32)

    def loss(self, model, rows, generator):
        err = model.weight.squeeze() - self.y[torch.as_tensor(rows)]
        return (err**2).mean(), {}

    def evaluate(self, model, rows, train_rows):
        return {"loss": float(self.loss(model, rows, None)[0])}


def fit(directory, identity, y=(1.0, 2.0, 3.0, 4.0), resume=True):
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    config = TrainConfig(lr=0.1, warmup_steps=1, batch_size=2, epochs=3)
    config.progress = False
    trainer = Trainer(model, Mean(y), config, directory, resume, identity)
    trainer.fit(np.arange(4), None)
    return model.weight.item()


def test_trainer__resume_with_another_identity_names_the_difference(tmp_path):
    rows = np.arange(4)
    first = fit(tmp_path, {"data": rows, "model settings": {"width": 8}})
    # the same identity resumes the finished run (no further step, same weights)
    assert fit(tmp_path, {"data": rows, "model settings": {"width": 8}}) == first
    with pytest.raises(InputError, match=r"other model settings; rerun with --restart"):
        fit(tmp_path, {"data": rows, "model settings": {"width": 16}})
    with pytest.raises(InputError, match=r"other data, model settings"):
        fit(tmp_path, {"data": rows[::-1], "model settings": {"width": 16}})
    with pytest.raises(InputError, match=r"other responses"):
        fit(tmp_path, {"data": rows, "model settings": {"width": 8}, "responses": 1})
    # starting afresh trains again, and the new identity is then the one resumed
    fresh = fit(tmp_path, {"data": rows, "model settings": {"width": 16}}, resume=False)
    assert fresh == first  # same seed, data and steps
    assert fit(tmp_path, {"data": rows, "model settings": {"width": 16}}) == fresh


def test_digest__tells_arrays_tensors_and_nesting_apart():
    a = np.arange(6, dtype=np.int64)
    assert digest(a) == digest(a.copy()) == digest(torch.arange(6))
    assert digest(a) != digest(a.reshape(2, 3)) != digest(a.astype(np.int32))
    assert digest({"x": [a, 1]}) != digest({"x": [a, 2]})
    assert digest([1, [2, 3]]) != digest([[1, 2], 3])


@pytest.fixture()
def small(tmp_path):
    assert (
        main(
            ["simulate", "--out", str(tmp_path / "sim"), "--individuals", "24"]
            + ["--markers", "40", "--qtl", "5", "--folds", "2"]
        )
        == 0
    )
    return tmp_path / "sim"


def test_pretrain__rerun_on_other_genotypes_is_refused_then_restarts(
    small, tmp_path, capsys
):
    chroms, markers = small / "chroms.tsv", small / "markers.tsv"
    tiny = ["--max-steps", "2", "--width", "16", "--latents", "4", "--no-progress"]
    out = tmp_path / "model"
    assert main(["pretrain", str(chroms), str(markers), "--out", str(out), *tiny]) == 0
    g = read_markers(markers, read_chroms(chroms))
    g.alleles[0, :5] = np.where(g.alleles[0, :5] == 1, 2, 1)  # other genotypes
    write_markers(g, tmp_path / "other.tsv")
    capsys.readouterr()
    args = ["pretrain", str(chroms), str(tmp_path / "other.tsv"), "--out", str(out)]
    assert main([*args, *tiny]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run with other genotypes" in err[0], err
    assert main([*args, *tiny, "--restart"]) == 0


def test_finetune__rerun_with_another_trait_is_refused(small, tmp_path):
    from gperceiver.finetuning import finetune
    from gperceiver.io import read_phenotypes

    g = read_markers(small / "markers.tsv", read_chroms(small / "chroms.tsv"))
    phenos = read_phenotypes(small / "phenotypes.tsv")
    tiny = {"width": 16, "n_latents": 4, "max_steps": 2, "progress": False}
    finetune(phenos, g, tmp_path / "f", tiny)
    finetune(phenos, g, tmp_path / "f", tiny)  # the same run: resumed, accepted
    other = read_phenotypes(small / "phenotypes.tsv")
    other.table["response"] = other.table["response"] * 2.0 + 1.0  # another trait
    with pytest.raises(InputError, match="other .*responses"):
        finetune(other, g, tmp_path / "f", tiny)
    finetune(other, g, tmp_path / "f", tiny, resume=False)


# evaluate slowed per training step, so that a kill lands inside a fold
EVALUATE = (
    SLOW_STEPS
    + """
import sys
from gperceiver.cli import main
slow_steps(float(sys.argv[1]))
sys.exit(main(sys.argv[2:]))
"""
)


def test_evaluate__killed_and_rerun_ends_with_the_same_predictions(small, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd

    script = tmp_path / "run.py"
    script.write_text(EVALUATE)
    args = ["evaluate", str(small / "phenotypes.tsv"), str(small / "chroms.tsv")]
    args += [str(small / "markers.tsv"), "--methods", "gblup,perceiver", "--quiet"]
    args += ["--width", "16", "--latents", "4", "--max-steps", "6"]
    (tmp_path / "params.json").write_text('{"eval_every": 2}')
    args += ["--batch-size", "8", "--params", str(tmp_path / "params.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, str(script)]
    subprocess.run(
        [*run, "0", *args, "--out", str(tmp_path / "full")], check=True, env=env
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*run, "0.3", *args, "--out", str(killed)], env=env)
    deadline = time.time() + 180
    while time.time() < deadline and not list(
        killed.glob("models/*/fold-*/*/*/checkpoints/latest.json")
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "predictions.tsv").exists()
    subprocess.run([*run, "0", *args, "--out", str(killed)], check=True, env=env)
    a = pd.read_csv(tmp_path / "full" / "predictions.tsv", sep="\t")
    b = pd.read_csv(killed / "predictions.tsv", sep="\t")
    pd.testing.assert_frame_equal(a, b)
