"""The released memory model (benchmarks/seq_models/kp-memory: the mixer; the memory is
rebuilt from Debian's kleborate-examples genomes) on the held-out NTUH-K2044."""

from pathlib import Path

import numpy as np
import pytest

from gperceiver.io import InputError
from gperceiver.seq.fasta import read_fasta, read_sequence_files
from gperceiver.seq.memory import join_digits
from gperceiver.seq.memory_lm import MemoryLM
from seq_helpers import write_fasta

DATA = Path("/usr/share/doc/kleborate/examples/data")
RELEASE = Path(__file__).parents[1] / "benchmarks" / "seq_models" / "kp-memory"
TRAIN = [
    DATA / f for f in ("Klebs_HS11286.fna.xz", "Klebs_Kp1084.fna.xz", "MGH78578.fna.xz")
]
XZ_CONDITIONAL = 0.236  # xz -9e given the training genomes, BENCHMARKS.md

needs_data = pytest.mark.skipif(
    not (DATA / "NTUH-K2044.fna.xz").exists(),
    reason="Debian package kleborate-examples is not installed",
)


@needs_data
@pytest.mark.slow
def test_released_memory_model__beats_xz_on_held_out_ntuh_k2044():
    model = MemoryLM.load(RELEASE, memory_from=read_sequence_files(TRAIN))
    chromosome = next(read_fasta(DATA / "NTUH-K2044.fna.xz")).tokens
    x = join_digits([chromosome[:300_000]], both_strands=False)
    lp = model.log2_probs(x)
    assert np.isnan(lp).sum() == (x > 3).sum()
    bits = -np.nanmean(lp)
    assert bits < XZ_CONDITIONAL


def test_released_memory_model__refuses_a_memory_of_other_genomes(tmp_path):
    write_fasta(tmp_path / "other.fa", {"a": "ACGT" * 50})
    with pytest.raises(
        InputError, match="200 bases, the mixer was trained with 16763920"
    ):
        MemoryLM.load(RELEASE, memory_from=read_sequence_files([tmp_path / "other.fa"]))
