"""CUDA runs agree with CPU runs: forward passes, training steps, predict, impute,
the additive path, the sequence model, checkpoints moved between devices, the
flash attention kernel and torchrun over NCCL.

Every test here is marked ``gpu`` and skipped without CUDA (tests/conftest.py).
On CUDA the library computes under bfloat16 autocast, whose 8-bit mantissa rounds
each value by up to 2^-9 relative; through a few layers outputs then agree with
float32 to about 1%, which sets the tolerances below. The additive path runs in
float32 on both devices and is held to float32 tolerances.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from gperceiver.checkpoint import load_tensors
from gperceiver.cli import main
from gperceiver.device import autocast, model_device, resolve_device
from gperceiver.finetuning import finetune, load_predictor
from gperceiver.nn.attention import SelfAttention
from gperceiver.nn.heads import HeadConfig, PhenotypeModel
from gperceiver.nn.perceiver import PerceiverConfig
from gperceiver.pretraining import (
    build_model,
    data_sizes,
    impute,
    load_masked_model,
    pretrain_encoder,
)
from gperceiver.seq import SeqLM
from gperceiver.seq.lm import bits_per_base
from gperceiver.seq.model import SeqConfig
from gperceiver.simulate import SimulationConfig, simulate
from pretrain_helpers import TINY
from seq_helpers import order2_chain, write_fasta
from test_distributed import free_port

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda", 0)
BF16_RELATIVE = 0.03  # |cuda - cpu| / |cpu| of a forward pass's outputs
LOSS_RELATIVE = 0.02  # the same for a logged loss


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    reference, other = reference.float().cpu(), other.float().cpu()
    return float((other - reference).norm() / reference.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def sim():
    config = SimulationConfig(
        n_individuals=120,
        n_markers=300,
        n_chromosomes=2,
        n_qtl=20,
        heritability=0.8,
        n_environments=2,
        n_folds=4,
        missing_rate=0.02,
        seed=6,
    )
    return simulate(config)


def _inputs(genotypes, n=8, device="cpu"):
    x = torch.from_numpy(genotypes.alleles[:n].astype(np.int64)).to(device)
    return x, torch.arange(genotypes.n_markers, device=device)


def test_auto__is_the_cuda_device():
    assert resolve_device("auto") == CUDA
    assert resolve_device("cuda") == CUDA and resolve_device("cuda:0") == CUDA


def test_forward__cuda_bf16_matches_cpu_float32(sim):
    g = sim.genotypes
    config = PerceiverConfig(**data_sizes(g), width=32, n_latents=8, dropout=0.0)
    torch.manual_seed(0)
    masked = build_model(config, g).eval()
    markers = g.markers
    torch.manual_seed(0)
    phenotype = PhenotypeModel(
        config, HeadConfig(2, additive=False), markers.relative_pos(), markers.chrom
    ).eval()
    targets = torch.tensor([[3, 50, 200]] * 8)
    with torch.no_grad():
        x, idx = _inputs(g)
        cpu = [masked(x, idx, targets), phenotype(x, idx)]
        masked.to(CUDA)
        phenotype.to(CUDA)
        x, idx = _inputs(g, device=CUDA)
        with autocast(CUDA):
            cuda = [masked(x, idx, targets.to(CUDA)), phenotype(x, idx)]
    for reference, other in zip(cpu, cuda, strict=True):
        assert other.is_cuda
        assert relative_error(reference, other) < BF16_RELATIVE


def _pretrain(genotypes, out, device, steps=6):
    settings = {**TINY, "max_steps": steps, "warmup_steps": 2, "eval_every": 2}
    return pretrain_encoder(genotypes, out, settings, device=device)


def test_training_steps__cuda_follow_the_cpu_loss_curve(sim, tmp_path):
    lr = 1e-3  # TrainConfig's default
    cpu = _pretrain(sim.genotypes, tmp_path / "cpu", None)
    cuda = _pretrain(sim.genotypes, tmp_path / "cuda", CUDA)
    assert model_device(cuda) == CUDA
    a = pd.read_csv(tmp_path / "cpu" / "metrics.csv")
    b = pd.read_csv(tmp_path / "cuda" / "metrics.csv")
    assert (a["step"] == b["step"]).all()
    np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=LOSS_RELATIVE)
    a, b = a[a["step"] > 0], b[b["step"] > 0]
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=LOSS_RELATIVE)
    # AdamW moves each weight by about lr a step: the two runs stay within a few
    # steps' worth of each other although bfloat16 flips the sign of tiny gradients
    for (name, w), v in zip(
        cpu.state_dict().items(), cuda.state_dict().values(), strict=True
    ):
        assert (w - v.cpu()).abs().max() <= 6 * 2 * lr, name


def test_checkpoint__a_cuda_run_loads_and_resumes_on_the_cpu(sim, tmp_path):
    cuda = _pretrain(sim.genotypes, tmp_path / "m", CUDA, steps=4)
    loaded, _ = load_masked_model(tmp_path / "m", sim.genotypes)
    assert model_device(loaded).type == "cpu"
    saved = cuda.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, saved[name].cpu()), name
    # the same call on the CPU is the same run: it resumes from the CUDA
    # checkpoint (its last step is done) instead of refusing or starting afresh
    resumed = _pretrain(sim.genotypes, tmp_path / "m", None, steps=4)
    assert model_device(resumed).type == "cpu"
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, saved[name].cpu()), name


@pytest.fixture(scope="module")
def finetuned(sim, tmp_path_factory):
    """A model finetuned on the CPU (additive path on), and its directory."""
    out = tmp_path_factory.mktemp("gpu-finetune") / "model"
    settings = {**TINY, "epochs": 2}
    finetune(sim.phenotypes, sim.genotypes, out, settings, resume=False)
    return out


def test_predict__cuda_matches_cpu(sim, finetuned):
    cpu = load_predictor(finetuned, sim.genotypes).predict(sim.genotypes)
    predictor = load_predictor(finetuned, sim.genotypes, device="cuda")
    assert all(model_device(m) == CUDA for m in predictor.members)
    cuda = predictor.predict(sim.genotypes)
    assert np.isfinite(cuda).all() and cuda.shape == cpu.shape
    spread = cpu.std()
    assert np.abs(cuda - cpu).max() < 0.03 * spread


def test_additive_path__cuda_matches_cpu_in_float32(sim, finetuned):
    """The additive path's sums cancel (the Gaussian kernel's distances): it
    runs in float32 inside autocast, so the two devices agree to float32."""
    cpu = load_predictor(finetuned, sim.genotypes).members[0].additive
    cuda = load_predictor(finetuned, sim.genotypes, device="cuda").members[0].additive
    x, idx = _inputs(sim.genotypes, n=32)
    with torch.no_grad():
        expected = cpu(x, idx)
        with autocast(CUDA):
            got = cuda(x.to(CUDA), idx.to(CUDA))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)


def test_finetune__on_cuda_predicts_as_on_the_cpu(sim, finetuned, tmp_path):
    settings = {**TINY, "epochs": 2}
    finetune(sim.phenotypes, sim.genotypes, tmp_path / "m", settings, device=CUDA)
    cpu = load_predictor(finetuned, sim.genotypes).predict(sim.genotypes)
    cuda = load_predictor(tmp_path / "m", sim.genotypes).predict(sim.genotypes)
    for block in range(cpu.shape[1]):
        r = np.corrcoef(cpu[:, block, 0], cuda[:, block, 0])[0, 1]
        assert r > 0.98, block


def test_impute__cuda_matches_cpu(sim, tmp_path):
    _pretrain(sim.genotypes, tmp_path / "m", None, steps=20)
    cpu_model, _ = load_masked_model(tmp_path / "m", sim.genotypes)
    cuda_model, _ = load_masked_model(tmp_path / "m", sim.genotypes, device=CUDA)
    cpu = impute(cpu_model, sim.genotypes, progress=False)
    cuda = impute(cuda_model, sim.genotypes, progress=False)
    assert len(cpu.rows) > 50  # missing_rate 0.02 of 120 x 300 loci
    assert (cuda.rows == cpu.rows).all() and (cuda.loci == cpu.loci).all()
    assert np.abs(cuda.probabilities - cpu.probabilities).max() < 0.05
    same = (cuda.genotypes.alleles == cpu.genotypes.alleles).all(-1)
    assert same.mean() > 0.999  # only near-ties may be called otherwise


@pytest.mark.parametrize("attention", ["exact", "performer", "hierarchical"])
def test_seq_model__cuda_bits_per_base_match_cpu(attention, tmp_path):
    from gperceiver.seq.fasta import read_sequence_files

    write_fasta(tmp_path / "x.fa", {"x": order2_chain(3000, 1)})
    records = read_sequence_files([tmp_path / "x.fa"])[0].records
    config = SeqConfig(
        width=32, depth=2, heads=2, features=16, chunk=16, context=128,
        attention=attention,
    )  # fmt: skip
    torch.manual_seed(0)
    model = SeqLM(config).eval()
    cpu, count = bits_per_base(model, records)
    cuda, cuda_count = bits_per_base(model.to(CUDA), records)
    assert cuda_count == count
    assert abs(cuda - cpu) < 0.01 * cpu


def test_seq_pretrain__cuda_follows_the_cpu_curve(tmp_path):
    write_fasta(tmp_path / "t.fa", {"a": order2_chain(20000, 1)})
    params = dict(
        width=32, depth=1, heads=2, features=16, chunk=16, context=64,
        max_steps=20, batch_size=8, eval_every=10, progress=False,
    )  # fmt: skip
    (tmp_path / "p.json").write_text(json.dumps(params))
    for device in ("cpu", "cuda"):
        argv = ["seq", "pretrain", str(tmp_path / "t.fa"), "--out"]
        argv += [str(tmp_path / device), "--params", str(tmp_path / "p.json")]
        assert main([*argv, "--device", device]) == 0
    a = pd.read_csv(tmp_path / "cpu" / "metrics.csv")
    b = pd.read_csv(tmp_path / "cuda" / "metrics.csv")
    np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=LOSS_RELATIVE)
    weights = load_tensors(tmp_path / "cuda" / "model.safetensors")
    assert all(t.device.type == "cpu" for t in weights.values())
    reloaded = SeqLM.from_pretrained(tmp_path / "cuda", CUDA)
    assert model_device(reloaded) == CUDA


def test_sdpa__flash_kernel_serves_the_attention_under_autocast():
    """With every other SDPA backend switched off, the encoder's self-attention
    and the sequence model's exact causal attention still run: flash serves
    them (bfloat16 under autocast, no mask)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    layer = SelfAttention(64, 4).to(CUDA)
    config = SeqConfig(width=64, depth=1, heads=2, context=256, attention="exact")
    seq = SeqLM(config).to(CUDA)
    x = torch.randn(2, 300, 64, device=CUDA)
    tokens = torch.randint(2, 6, (2, 256), device=CUDA)
    with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]), autocast(CUDA):
        assert layer(x).shape == x.shape
        assert seq(tokens).shape == (2, 256, config.vocab_size)


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2,
    reason="torchrun over NCCL needs two GPUs",
)
def test_torchrun__nccl_on_two_gpus_follows_one_gpu(tmp_path):
    out = tmp_path / "cohort"
    args = ["simulate", "--out", str(out), "--individuals", "100", "--markers", "200"]
    assert main([*args, "--chromosomes", "2", "--qtl", "10", "--seed", "4"]) == 0
    common = [str(out / "chroms.tsv"), str(out / "markers.tsv"), "--width", "16"]
    common += ["--latents", "4", "--encode-iters", "1", "--batch-size", "32"]
    common += ["--max-steps", "12", "--no-progress", "--device", "cuda"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "gperceiver", "pretrain", *common]
    one = subprocess.run(
        [*command, "--out", str(tmp_path / "one")], env=env, capture_output=True
    )
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node"]
    torchrun += ["2", "--master_port", str(free_port()), "-m", "gperceiver"]
    two = subprocess.run(
        [*torchrun, "pretrain", *common, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
    )
    assert two.returncode == 0, two.stderr
    a = pd.read_csv(tmp_path / "one" / "metrics.csv")
    b = pd.read_csv(tmp_path / "two" / "metrics.csv")
    np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=LOSS_RELATIVE)
