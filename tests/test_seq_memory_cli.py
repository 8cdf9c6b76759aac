"""`gperceiver seq pretrain --kind memory`, `evaluate` and `score` on simulated strains:
the memory model must beat every order-k Markov model and xz given the training
strains, on a held-out strain."""

import importlib.util
import json
import lzma
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gperceiver.cli import main
from gperceiver.io import InputError
from gperceiver.seq.fasta import read_sequence_files
from gperceiver.seq.memory_lm import MemoryLM
from seq_helpers import letters, related_strains, write_fasta

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "seq_markov.py"
spec = importlib.util.spec_from_file_location("seq_markov", SCRIPT)
seq_markov = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seq_markov)


@pytest.fixture(scope="module")
def strains(tmp_path_factory):
    root = tmp_path_factory.mktemp("strains")
    genomes = related_strains(60_000, 4, seed=3)
    for i, g in enumerate(genomes):
        write_fasta(root / f"s{i}.fa", {f"s{i}_chrom": letters(g)})
    params = root / "params.json"
    params.write_text(json.dumps(dict(samples_per_group=50_000, epochs=3)))
    train = [str(root / f"s{i}.fa") for i in range(3)]
    argv = ["seq", "pretrain", *train, "--out", str(root / "m"), "--kind", "memory",
            "--params", str(params), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    return root, genomes


def xz_conditional_bits(train: list[str], test: str) -> float:
    def size(text):
        return len(lzma.compress(text.encode(), preset=9 | lzma.PRESET_EXTREME))

    joined = "\n".join(train) + "\n"
    return 8 * (size(joined + test + "\n") - size(joined)) / len(test)


def test_seq_evaluate__memory_model_beats_markov_and_xz_on_a_held_out_strain(
    strains, capsys
):
    root, genomes = strains
    capsys.readouterr()
    assert (
        main(["seq", "evaluate", str(root / "s3.fa"), "--model", str(root / "m")]) == 0
    )
    out = dict(line.split("=") for line in capsys.readouterr().out.split())
    bits = float(out["bits_per_base"])
    assert int(out["scored_bases"]) == 60_000
    train = np.concatenate([np.append(g, -1) for g in genomes[:3]]).astype(np.int8)
    train = np.concatenate(
        [train, np.concatenate([np.append((3 - g)[::-1], -1) for g in genomes[:3]])]
    )
    test = np.append(genomes[3], -1).astype(np.int8)
    markov = seq_markov.markov_bits(train.astype(np.int8), test, max_order=12)
    xz = xz_conditional_bits([letters(g) for g in genomes[:3]], letters(genomes[3]))
    assert bits < min(markov) and bits < xz
    # the strain has 1/15 novel bases (2 bits each): no model can go below ~0.13
    assert bits > 0.13


def test_seq_score__writes_one_row_per_allele(strains, tmp_path):
    root, _ = strains
    ref = root / "s0.fa"
    seq = (root / "s0.fa").read_text().split("\n", 1)[1].replace("\n", "")
    vcf = tmp_path / "v.vcf"
    vcf.write_text(
        "#CHROM\tPOS\tID\tREF\tALT\n"
        f"s0_chrom\t1000\t.\t{seq[999]}\t{'ACGT'[('ACGT'.index(seq[999]) + 1) % 4]}\n"
        f"s0_chrom\t2000\t.\t{seq[1999:2002]}\t{seq[1999]}\n"
    )
    out = tmp_path / "scores.tsv"
    argv = [
        "seq",
        "score",
        str(ref),
        str(vcf),
        "--model",
        str(root / "m"),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == [
        "chrom",
        "pos",
        "ref",
        "alt",
        "llr_forward",
        "llr_reverse",
        "llr",
    ]
    assert len(table) == 2
    # s0 is in the memory: departing from it costs many bits on both strands
    assert (table["llr_forward"] < -3).all() and (table["llr_reverse"] < -3).all()


def test_seq_pretrain_memory__refuses_a_single_record(tmp_path, capsys):
    write_fasta(tmp_path / "one.fa", {"a": "ACGT" * 100})
    argv = [
        "seq",
        "pretrain",
        str(tmp_path / "one.fa"),
        "--out",
        str(tmp_path / "m"),
        "--kind",
        "memory",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "one record" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_memory_lm__rebuilt_memory_gives_the_saved_model(strains, tmp_path):
    root, genomes = strains
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name in ("config.json", "mixer.safetensors"):
        (shipped / name).write_bytes((root / "m" / name).read_bytes())
    with pytest.raises(InputError, match="no memory/ beside the mixer"):
        MemoryLM.load(shipped)
    train = [root / f"s{i}.fa" for i in range(3)]
    rebuilt = MemoryLM.load(shipped, memory_from=read_sequence_files(train))
    x = genomes[3][:5000]
    assert np.array_equal(
        rebuilt.log2_probs(x), MemoryLM.load(root / "m").log2_probs(x)
    )
