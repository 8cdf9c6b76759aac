"""``--device``: resolution and refusals, CPU runs equal to the default, tensors
made inside the library on the model's device (checked on the ``meta`` device),
and checkpoints that do not depend on the device. The CUDA comparisons are in
tests/test_gpu.py."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from gperceiver.checkpoint import load_tensors
from gperceiver.cli import main, seed_pretrain
from gperceiver.device import as_device, model_device, resolve_device
from gperceiver.io import InputError
from gperceiver.nn.environment import EnvironmentConfig, EnvironmentPhenotypeModel
from gperceiver.nn.heads import HeadConfig, PhenotypeModel
from gperceiver.nn.perceiver import PerceiverConfig
from gperceiver.pretraining import build_model, data_sizes, pretrain_encoder
from gperceiver.seq import SeqLM
from gperceiver.seq.model import SeqConfig
from gperceiver.simulate import SimulationConfig, simulate
from gperceiver.train import _on_cpu
from pretrain_helpers import TINY

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")


@pytest.fixture(scope="module")
def population():
    config = SimulationConfig(
        n_individuals=40, n_markers=80, n_qtl=10, n_chromosomes=2, seed=4
    )
    return simulate(config).genotypes


def test_resolve_device__cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert as_device(None) == torch.device("cpu")  # the library's default
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["bogus", "gpu", "cuda:x", "cuda:-1", "mps"])
def test_resolve_device__raises_on_unknown_name(name):
    with pytest.raises(InputError, match=r"^--device: .*not a device; give auto"):
        resolve_device(name)


@NO_CUDA
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "auto"])
def test_resolve_device__raises_on_cuda_without_cuda(name):
    if name == "auto":  # auto falls back to the CPU instead
        assert resolve_device(name) == torch.device("cpu")
        return
    with pytest.raises(InputError, match=r"^--device: .*no CUDA device.*--device cpu"):
        resolve_device(name)


def _commands(wheat_paths, tmp_path):
    """Every command that trains or infers, with inputs it could run on."""
    fasta = tmp_path / "input.fa"
    fasta.write_text(">a\nACGTACGTAC\n")
    vcf = tmp_path / "input.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n")
    tables = [str(wheat_paths[k]) for k in ("chroms", "markers")]
    phenos = str(wheat_paths["phenotypes"])
    out = str(tmp_path / "out")
    return {
        "pretrain": ["pretrain", *tables, "--out", out],
        "impute": ["impute", *tables, "--out", out + ".tsv", "--method", "masked"],
        "finetune": ["finetune", phenos, *tables, "--out", out],
        "predict": ["predict", *tables, "--model", out, "--out", out + ".tsv"],
        "evaluate": ["evaluate", phenos, *tables, "--out", out, "--methods", "gblup"],
        "seq pretrain": ["seq", "pretrain", str(fasta), "--out", out],
        "seq evaluate": ["seq", "evaluate", str(fasta), "--model", out],
        "seq embed": ["seq", "embed", str(fasta), "--model", out, "--out", out],
        "seq score": ["seq", "score", str(fasta), str(vcf), "--model", out]
        + ["--out", out + ".tsv"],
    }


COMMANDS = [
    "pretrain", "impute", "finetune", "predict", "evaluate",
    "seq pretrain", "seq evaluate", "seq embed", "seq score",
]  # fmt: skip


@pytest.mark.parametrize("device", ["bogus", pytest.param("cuda:0", marks=NO_CUDA)])
@pytest.mark.parametrize("command", COMMANDS)
def test_cli__device_refused_in_one_line_before_anything_is_written(
    command, device, wheat_paths, tmp_path, capsys
):
    argv = _commands(wheat_paths, tmp_path)[command] + ["--device", device]
    before = sorted(tmp_path.rglob("*"))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gperceiver: error: --device: ")
    assert repr(device) in err
    assert "give auto, cpu, cuda or cuda:N" in err or "use --device cpu" in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_seed_entry_point__refuses_a_bogus_device(wheat_paths, tmp_path, capsys):
    chroms, markers = str(wheat_paths["chroms"]), str(wheat_paths["markers"])
    argv = [chroms, markers, "--model", str(tmp_path / "m"), "--device", "bogus"]
    assert seed_pretrain(argv) == 1
    assert "--device: 'bogus' is not a device" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def _pretrain_cli(wheat_paths, out, *extra) -> int:
    argv = ["pretrain", str(wheat_paths["chroms"]), str(wheat_paths["markers"])]
    argv += ["--out", str(out), "--width", "16", "--latents", "4"]
    argv += ["--encode-iters", "1", "--max-steps", "3", "--batch-size", "8"]
    return main([*argv, "--no-progress", *extra])


def test_cli__device_cpu_equals_the_default(wheat_paths, tmp_path):
    assert _pretrain_cli(wheat_paths, tmp_path / "default") == 0
    assert _pretrain_cli(wheat_paths, tmp_path / "cpu", "--device", "cpu") == 0
    a = load_tensors(tmp_path / "default" / "model.safetensors")
    b = load_tensors(tmp_path / "cpu" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # equal up to float32 rounding (two runs of one process differ
        # by ~1e-9 already: the order of some threaded sums)
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-8)
    # and their checkpoints hold the same run: the same identity
    default = (tmp_path / "default" / "checkpoints" / "latest.json").read_text()
    cpu = (tmp_path / "cpu" / "checkpoints" / "latest.json").read_text()
    assert default == cpu


def test_trainer__a_run_resumed_with_another_device_is_the_same_run(
    population, tmp_path
):
    """The checkpoint's identity holds no device: the run resumes (its
    checkpoint's weights are read onto the model's device) instead of being
    refused."""
    settings = {**TINY, "max_steps": 4, "checkpoint_every": 2}
    first = pretrain_encoder(population, tmp_path / "m", settings, device=None)
    again = pretrain_encoder(population, tmp_path / "m", settings, device="cpu")
    for (name, a), b in zip(
        first.state_dict().items(), again.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert model_device(again) == torch.device("cpu")


def test_on_cpu__copies_nested_tensors_and_keeps_the_rest():
    state = ({"w": torch.ones(2)}, [torch.zeros(1), 3], "x", True)
    copied = _on_cpu(state)
    assert copied[2:] == ("x", True) and copied[1][1] == 3
    assert isinstance(copied, tuple) and isinstance(copied[1], list)
    assert copied[0]["w"] is not state[0]["w"]
    assert torch.equal(copied[0]["w"], torch.ones(2))


# -- tensors made inside the library follow the model ------------------------------
# A forward on the ``meta`` device fails ("Tensor on device meta is not on the
# expected device cpu") as soon as a layer combines its inputs with a tensor it
# made without ``device=``; on CUDA the same line would fail, or copy every step.


def _meta(*tensors):
    return [t.to("meta") for t in tensors]


def _inputs(genotypes, n=3):
    x = torch.from_numpy(genotypes.alleles[:n].astype(np.int64))
    return x, torch.arange(genotypes.n_markers)


def _config(genotypes, **extra):
    fields = {**data_sizes(genotypes), "width": 16, "n_latents": 4, **extra}
    return PerceiverConfig(self_layers=1, encode_iters=1, **fields)


@pytest.mark.parametrize("task", ["masked", "both"])
def test_meta_forward__pretraining_models_follow_their_device(population, task):
    """(The graph layers read their edge bounds back to the host, which a meta
    tensor cannot: tests/test_gpu.py covers them.)"""
    model = build_model(_config(population), population, task).to("meta")
    x, idx = _meta(*_inputs(population, n=4))
    targets = torch.tensor([[0, 5], [0, 5], [3, 4], [3, 4]], device="meta")
    assert model(x, idx, targets).device.type == "meta"
    if task == "both":  # the pair decoder too
        latents, tokens = model.encode(x, idx, return_tokens=True)
        assert model.decode_pairs(latents, tokens, idx, targets).is_meta


@pytest.mark.parametrize(
    "head, kernel", [("pool", None), ("latent", "linear"), ("pool", "gaussian")]
)
def test_meta_forward__phenotype_models_and_additive_paths_follow_their_device(
    population, head, kernel
):
    sizes = {"kernel_rows": 7, "kernel_features": population.n_markers}
    extra = {} if kernel is None else {"additive_kernel": kernel, **sizes}
    head_config = HeadConfig(2, head=head, additive=kernel is not None, **extra)
    markers = population.markers
    model = PhenotypeModel(
        _config(population), head_config, markers.relative_pos(), markers.chrom
    )
    if kernel == "gaussian":
        model.additive.keep.copy_(torch.arange(population.n_markers))
    model.to("meta").train()
    x, idx = _meta(*_inputs(population))
    out = model(x, idx)
    assert out.is_meta and out.shape == (3, 2, 1)
    model.eval()
    assert model(x, idx).is_meta


def test_meta_forward__environment_model_follows_its_device(population):
    markers = population.markers
    environment = EnvironmentConfig(n_covariates=2, n_times=5, env_tokens=2)
    covariates = torch.randn(3, 5, 2)
    has = torch.tensor([True, True, False])
    model = EnvironmentPhenotypeModel(
        _config(population),
        HeadConfig(3, additive=False),
        environment,
        markers.relative_pos(),
        markers.chrom,
        covariates,
        has,
    ).to("meta")
    x, idx = _meta(*_inputs(population))
    out = model(x, idx)
    assert out.is_meta and out.shape[:2] == (3, 3)


@pytest.mark.parametrize("attention", ["exact", "performer", "hierarchical"])
def test_meta_forward__sequence_model_follows_its_device(attention):
    config = SeqConfig(width=16, depth=1, heads=2, features=8, chunk=8, context=32)
    model = SeqLM(replace(config, attention=attention)).to("meta")
    tokens = torch.randint(0, 7, (2, 32), device="meta")
    mask = torch.zeros(2, 32, dtype=torch.bool, device="meta")
    assert model(tokens, mask).shape == (2, 32, config.vocab_size)
