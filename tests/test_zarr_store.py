"""VCF Zarr store: the layout other tools read, streamed reads, streamed pretraining."""

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from gperceiver.checkpoint import load_tensors
from gperceiver.cli import main
from gperceiver.io import write_chroms, write_genotype_file, write_markers
from gperceiver.io.variants import blocks_from_genotypes
from gperceiver.io.vcf import placeholder_alleles
from gperceiver.io.zarr_store import ZarrGenotypes, write_zarr
from gperceiver.pretraining import pretrain_encoder
from gperceiver.simulate import SimulationConfig, simulate

TINY = {
    "width": 16,
    "n_latents": 4,
    "self_layers": 1,
    "encode_iters": 1,
    "batch_size": 8,
    "progress": False,
}


@pytest.fixture(scope="module")
def population():
    return simulate(
        SimulationConfig(
            n_individuals=70,
            n_markers=150,
            n_chromosomes=3,
            missing_rate=0.03,
            n_qtl=20,
            seed=5,
        )
    ).genotypes


def store_of(genotypes, path, variant_chunk=40, sample_chunk=16):
    blocks = blocks_from_genotypes(
        genotypes, placeholder_alleles(genotypes.n_alleles), variant_chunk
    )
    write_zarr(blocks, genotypes.names, path, variant_chunk, sample_chunk)
    return path


def streamed(path, samples=16, markers=150, ploidy=2):
    """The store read in blocks of ``samples`` individuals, by memory budget."""
    return ZarrGenotypes(path, block_bytes=samples * markers * ploidy)


def test_write_zarr__vcf_zarr_layout(population, tmp_path):
    g = population
    store_of(g, tmp_path / "g.zarr")
    group = zarr.open_group(tmp_path / "g.zarr", mode="r")
    assert group.attrs["vcf_zarr_version"] == "0.4"
    calls = group["call_genotype"]
    assert calls.dtype == np.int8 and calls.shape == (g.n_markers, g.n_individuals, 2)
    assert calls.chunks == (40, 16, 2)
    assert calls.attrs["_ARRAY_DIMENSIONS"] == ["variants", "samples", "ploidy"]
    # -1 exactly where a copy is missing, allele index = id - 1 elsewhere
    expected = g.alleles.transpose(1, 0, 2).astype(np.int16) - 1
    assert (calls[:] == expected).all() and (calls[:] == -1).any()
    contigs = np.array(group["contig_id"][:].tolist())
    labels = contigs[group["variant_contig"][:]]
    assert (labels == g.markers.chrom_labels()).all()
    assert (group["variant_position"][:] == g.markers.pos).all()
    assert group["sample_id"][:].tolist() == g.names.tolist()
    assert group["variant_allele"][:].tolist()[0] == ["A", "C"]


def test_streamed_alleles__match_memory_for_any_index(population, tmp_path):
    g = population
    z = streamed(store_of(g, tmp_path / "g.zarr"))
    assert z.alleles.block_samples == 16
    rng = np.random.default_rng(0)
    for rows in [rng.permutation(70)[:9], np.arange(15, 33), [69], slice(5, 60, 7)]:
        assert (z.alleles[rows] == g.alleles[rows]).all()
    assert (z.alleles[3, 10:20] == g.alleles[3, 10:20]).all()
    assert (
        z.allele_frequencies(np.arange(0, 70, 3))
        == g.allele_frequencies(np.arange(0, 70, 3))
    ).all()
    assert z.markers.fingerprint() == g.markers.fingerprint()


def test_streamed_alleles__unsorted_store_is_read_in_map_order(population, tmp_path):
    # a store whose variants are not in natural chromosome order (as a VCF may be)
    g = population
    reverse = np.arange(g.n_markers)[::-1]
    blocks = list(blocks_from_genotypes(g, ["A", "C"], g.n_markers))
    block = blocks[0]
    for field in ("contig", "position", "map_position", "ids", "alleles", "calls"):
        setattr(block, field, getattr(block, field)[reverse])
    write_zarr([block], g.names, tmp_path / "r.zarr", 1000, 1000)
    z = ZarrGenotypes(tmp_path / "r.zarr")
    assert z.markers.fingerprint() == g.markers.fingerprint()
    assert (z.alleles[[4, 1]] == g.alleles[[4, 1]]).all()


def test_epoch_order__visits_every_row_once_one_block_at_a_time(population, tmp_path):
    z = streamed(store_of(population, tmp_path / "g.zarr"))
    rows = np.arange(3, 70, 2)
    order = z.epoch_order(rows, np.random.default_rng(1))
    assert sorted(order.tolist()) == rows.tolist()
    block = order // 16
    assert (np.diff(block) != 0).sum() == len(np.unique(block)) - 1  # contiguous runs
    assert not (np.diff(order) > 0).all()  # shuffled


def test_pretrain__one_block_store_equals_in_memory(population, tmp_path):
    store = store_of(population, tmp_path / "g.zarr", sample_chunk=1000)
    settings = {**TINY, "epochs": 2}
    pretrain_encoder(population, tmp_path / "mem", {}, settings)
    pretrain_encoder(ZarrGenotypes(store), tmp_path / "zarr", {}, settings)
    a = pd.read_csv(tmp_path / "mem" / "metrics.csv")
    b = pd.read_csv(tmp_path / "zarr" / "metrics.csv")
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    wa = load_tensors(tmp_path / "mem" / "model.safetensors")
    wb = load_tensors(tmp_path / "zarr" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_pretrain__streams_block_by_block(population, tmp_path):
    z = streamed(store_of(population, tmp_path / "g.zarr"))
    n_blocks, epochs = 5, 3  # 70 individuals in blocks of 16
    pretrain_encoder(z, tmp_path / "m", {}, {**TINY, "epochs": epochs})
    metrics = pd.read_csv(tmp_path / "m" / "metrics.csv")
    # the starting point's validation, then one per epoch
    assert len(metrics) == epochs + 1 and np.isfinite(metrics["val_loss"]).all()
    # frequencies: one pass; the first validation; each epoch: one read per block to
    # train, one to validate
    assert z.alleles.blocks_read <= n_blocks * (2 + 2 * epochs)


def test_cli__pretrain_and_predict_from_a_store(population, tmp_path):
    g = population
    write_chroms(g.markers, tmp_path / "chroms.tsv")
    write_markers(g, tmp_path / "markers.tsv")
    write_genotype_file(g, tmp_path / "g.zarr")
    phenos = pd.DataFrame(
        {"name": g.names, "response": g.alleles[:, :20].sum((1, 2)), "block": 0}
    )
    phenos.to_csv(tmp_path / "phenos.tsv", sep="\t", index=False)
    tiny = ["--width", "16", "--latents", "4", "--encode-iters", "1", "--no-progress"]
    tiny += ["--batch-size", "8", "--max-steps", "3"]
    store = str(tmp_path / "g.zarr")
    assert main(["pretrain", store, "--out", str(tmp_path / "pre"), *tiny]) == 0
    assert (tmp_path / "pre" / "model.safetensors").exists()
    model = str(tmp_path / "ft")
    assert (
        main(["finetune", str(tmp_path / "phenos.tsv"), store, "--out", model, *tiny])
        == 0
    )
    assert (
        main(["predict", store, "--model", model, "--out", str(tmp_path / "a.tsv")])
        == 0
    )
    table_args = [str(tmp_path / "chroms.tsv"), str(tmp_path / "markers.tsv")]
    assert (
        main(
            ["predict", *table_args, "--model", model, "--out", str(tmp_path / "b.tsv")]
        )
        == 0
    )
    a = pd.read_csv(tmp_path / "a.tsv", sep="\t")
    b = pd.read_csv(tmp_path / "b.tsv", sep="\t")
    pd.testing.assert_frame_equal(a, b)
