"""Outputs behave like files: modes from the umask, written beside and renamed,
model directories complete or absent."""

import os
import stat

import pytest
import torch

from gperceiver.checkpoint import load_model_config, save_model
from gperceiver.data import MarkerMap
from gperceiver.io import atomic_directory, atomic_path, write_genotype_file
from gperceiver.simulate import SimulationConfig, simulate


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_path__mode_follows_the_umask_as_open_does(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain", "w") as f:
        f.write("x")
    with atomic_path(tmp_path / "atomic") as tmp:
        tmp.write_text("x")
    assert mode(tmp_path / "atomic") == mode(tmp_path / "plain") == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic", "plain"]


def markers(n=5):
    return MarkerMap.from_columns(["1"] * n, [f"m{i}" for i in range(n)], range(n))[0]


def test_save_model__new_directory_appears_whole_with_ordinary_modes(tmp_path, umask):
    umask(0o022)
    save_model(tmp_path / "model", torch.nn.Linear(2, 1), {"task": "x"}, markers())
    assert mode(tmp_path / "model") == 0o755
    assert mode(tmp_path / "model" / "model.safetensors") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging left
    config, back = load_model_config(tmp_path / "model")
    assert config["task"] == "x" and back.fingerprint() == markers().fingerprint()


def test_save_model__existing_directory_keeps_its_checkpoints(tmp_path):
    (tmp_path / "model" / "checkpoints").mkdir(parents=True)
    (tmp_path / "model" / "checkpoints" / "latest.json").write_text("{}")
    save_model(tmp_path / "model", torch.nn.Linear(2, 1), {"task": "x"}, markers())
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == ["checkpoints", "config.json", "markers.tsv", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_directory__error_leaves_the_old_directory_untouched(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d") as staging:
        (staging / "config.json").write_text("new")
        raise RuntimeError("killed")
    assert (tmp_path / "d" / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_write_store__directories_get_mkdirs_mode(tmp_path, umask):
    umask(0o022)
    g = simulate(
        SimulationConfig(n_individuals=12, n_markers=20, n_qtl=2, n_folds=2)
    ).genotypes
    write_genotype_file(g, tmp_path / "g.zarr")
    assert mode(tmp_path / "g.zarr") == 0o755
    assert all(
        mode(p) == (0o755 if p.is_dir() else 0o644)
        for p in (tmp_path / "g.zarr").rglob("*")
    )


def test_plink_writer__files_get_ordinary_modes(tmp_path, umask):
    umask(0o022)
    g = simulate(
        SimulationConfig(n_individuals=12, n_markers=20, n_qtl=2, n_folds=2)
    ).genotypes
    write_genotype_file(g, tmp_path / "g.bed")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["g.bed", "g.bim", "g.fam"]
    assert all(mode(tmp_path / n) == 0o644 for n in names)
