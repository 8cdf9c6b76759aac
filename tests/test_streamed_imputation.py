"""Streamed one-shot imputation of a VCF Zarr store (streamed_imputation.py): the
same VCF as the in-memory path, with stretch boundaries inside chromosomes, and
memory that does not grow with the markers."""

import gzip
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from gperceiver.cli import main
from gperceiver.imputation import PanelImputeSettings, impute_with_panel
from gperceiver.io.imputed_vcf import write_imputed_vcf
from gperceiver.io.zarr_store import ZarrGenotypes
from gperceiver.nn.panel import PanelConfig, chromosome_spans
from gperceiver.streamed_imputation import (
    StreamSettings,
    context_windows,
    fit_spans,
    impute_store,
    stretches,
)
from gperceiver.tasks.panel import PanelFitConfig
from test_panel import mosaic_genotypes
from test_zarr_store import store_of

FIT = PanelFitConfig(steps=3, queries=8, windows=6, time_budget_s=1e9)
MODEL = PanelConfig(block=8, head_radii=(1, 3), segment=2)
# cores of 48 markers (three segments of two windows of 8), contexts of 32
STREAM = StreamSettings(stream_markers=48, fit_markers=10**6, scan_markers=100)


def records(path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return [line for line in f if not line.startswith("##fileDate")]


@pytest.mark.parametrize(
    "model",
    [
        MODEL,  # 60 individuals read whole: exact full attention
        replace(MODEL, shortlist=16, hash_tables=8, key_markers=3),  # candidates
        replace(MODEL, shortlist=16, hash_tables=8, key_markers=3, layers=2),
    ],
    ids=["full", "shortlist", "shortlist-2-layers"],
)
def test_impute_store__streamed_equals_in_memory(model, tmp_path):
    g = mosaic_genotypes(60, 420, chroms=3, missing=0.05, seed=4)
    store = ZarrGenotypes(store_of(g, tmp_path / "g.zarr", variant_chunk=50))
    lo, hi = chromosome_spans(store.markers.chrom)[0]
    context = context_windows(model) * model.block
    assert len(stretches(lo, hi, 48, context)) == 3  # boundaries inside chromosomes
    settings = PanelImputeSettings(model=model, fit=FIT, chunk=25)
    want = impute_with_panel(store.load(), settings=settings)
    write_imputed_vcf(want, tmp_path / "memory.vcf.gz", want.typed)
    summary = impute_store(store, tmp_path / "streamed.vcf.gz", settings, STREAM)
    assert summary["imputed"] == len(want.rows) > 0
    assert summary["fit_steps"] == want.summary["fit_steps"] == 3
    got, expected = (
        records(tmp_path / "streamed.vcf.gz"),
        records(tmp_path / "memory.vcf.gz"),
    )
    assert (
        len(got) == len(expected) == 420 + 1 + sum(1 for x in expected if x[:2] == "##")
    )
    assert got == expected


def test_impute_store__a_reordered_store_reads_in_map_order(tmp_path):
    """Variants stored out of map order: the streamed path reads each stretch in map
    order (and equals the in-memory path)."""
    g = mosaic_genotypes(40, 200, chroms=2, missing=0.05, seed=6)
    order = np.random.default_rng(0).permutation(200)
    shuffled = g.subset(markers=order)
    shuffled.markers.chrom[:] = g.markers.chrom[order]
    path = store_of(shuffled, tmp_path / "g.zarr", variant_chunk=30)
    store = ZarrGenotypes(path)
    assert (store.markers.names == g.markers.names).all()
    assert (store.marker_block(10, 90).alleles == g.alleles[:, 10:90]).all()
    settings = PanelImputeSettings(model=MODEL, fit=FIT, chunk=25)
    want = impute_with_panel(store.load(), settings=settings)
    write_imputed_vcf(want, tmp_path / "memory.vcf.gz", want.typed)
    impute_store(store, tmp_path / "streamed.vcf.gz", settings, STREAM)
    assert records(tmp_path / "streamed.vcf.gz") == records(tmp_path / "memory.vcf.gz")


def test_fit_spans__stretches_stay_within_chromosomes():
    chrom = np.repeat([0, 1, 2], [1000, 300, 2000])
    spans = fit_spans(chrom, 192, 1200)
    assert fit_spans(chrom, 192, 4000) == [(0, 3300)]
    assert 1000 <= sum(b - a for a, b in spans) <= 1200
    assert all(a < b and chrom[a] == chrom[b - 1] for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    assert {chrom[a] for a, _ in spans} == {0, 1, 2}


def peak_numpy_bytes(func, *args, **kwargs) -> int:
    tracemalloc.start()
    try:
        func(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_impute_store__memory_does_not_grow_with_the_markers(tmp_path):
    """Peak numpy memory (tracemalloc; torch's own buffers are not traced) of the
    streamed path on 1,500 and 6,000 markers: about the same; the in-memory path's
    grows with the markers (so the measure can tell)."""
    settings = PanelImputeSettings(model=MODEL, fit=FIT, chunk=25)
    stream = StreamSettings(stream_markers=256, fit_markers=256, scan_markers=256)
    peaks = {}
    for m in (1500, 6000):
        g = mosaic_genotypes(50, m, chroms=2, missing=0.05, seed=1)
        store = ZarrGenotypes(store_of(g, tmp_path / f"{m}.zarr", variant_chunk=200))
        out = tmp_path / f"{m}.vcf.gz"
        peaks[m] = peak_numpy_bytes(impute_store, store, out, settings, stream)
        peaks[f"memory{m}"] = peak_numpy_bytes(
            lambda s: impute_with_panel(s.load(), settings=settings), store
        )
    assert peaks[6000] < 1.3 * peaks[1500]
    assert peaks["memory6000"] > 2.5 * peaks["memory1500"]


def test_impute_cli__a_zarr_store_into_a_vcf_is_streamed(tmp_path, capsys):
    g = mosaic_genotypes(40, 160, chroms=2, missing=0.05, seed=2)
    path = store_of(g, tmp_path / "g.zarr", variant_chunk=50)
    out = tmp_path / "imputed.vcf.gz"
    code = main(
        ["impute", str(path), "--out", str(out), "--fit-steps", "2", "--window", "8"]
    )
    assert code == 0
    assert "(streamed)" in capsys.readouterr().out
    lines = [x for x in records(out) if not x.startswith("#")]
    assert len(lines) == 160
    gt = np.array([[e.split(":")[0] for e in x.split("\t")[9:]] for x in lines])
    assert "./." not in gt and "./1" not in gt
    called = (g.alleles != 0).all(-1).T  # (M, N) observed calls kept
    truth = np.array(["0/0", "0/1", "1/1"])[(g.alleles == 2).sum(-1).T]
    assert (gt[called] == truth[called]).all()
    assert not list(tmp_path.glob(".imputed*"))  # no temporary file left


def test_impute_cli__a_damaged_store_is_refused_and_nothing_written(tmp_path, capsys):
    g = mosaic_genotypes(40, 160, chroms=2, missing=0.05, seed=2)
    path = store_of(g, tmp_path / "g.zarr", variant_chunk=50)
    chunk = path / "call_genotype" / "3.0.0"  # variants 151-160
    chunk.write_bytes(chunk.read_bytes()[:5])
    out = tmp_path / "imputed.vcf.gz"
    assert main(["impute", str(path), "--out", str(out), "--fit-steps", "2"]) == 1
    err = capsys.readouterr().err
    assert "markers" in err and "cannot be read" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == [path]
