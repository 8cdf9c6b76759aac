"""`gperceiver seq` end to end on simulated DNA of known entropy rate."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from gperceiver.cli import main
from gperceiver.seq import SeqLM
from seq_helpers import entropy_rate, order2_chain, write_fasta


def seq_pretrain(fasta, out, params: dict) -> int:
    """``gperceiver seq pretrain FASTA --out OUT --params JSON``; the exit code."""
    path = out.with_name(out.name + "-params.json")
    path.write_text(json.dumps(params))
    return main(
        ["seq", "pretrain", str(fasta), "--out", str(out), "--params", str(path)]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    write_fasta(
        root / "train.fa", {"a": order2_chain(30000, 1), "b": order2_chain(20000, 2)}
    )
    held = order2_chain(6000, 3)
    write_fasta(root / "test.fa", {"x": held[:4000] + "NNNN" + held[4000:].lower()})
    params = dict(
        width=32, depth=1, heads=2, features=32, chunk=16, context=64,
        max_steps=150, batch_size=8, lr=3e-3, warmup_steps=10, eval_every=50,
        progress=False,
    )  # fmt: skip
    assert seq_pretrain(root / "train.fa", root / "model", params) == 0
    return root


def test_seq_evaluate__bits_per_base_near_the_entropy_rate(trained, capsys):
    capsys.readouterr()
    code = main(
        ["seq", "evaluate", str(trained / "test.fa"), "--model", str(trained / "model")]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    name, value = lines[-1].split("=")
    assert name == "bits_per_base"
    bits, truth = float(value), entropy_rate()
    # a causal model cannot beat the entropy rate (up to sampling noise of 6000
    # bases); a leak from the future would; a model that learned nothing gives 2
    assert truth - 0.05 < bits < truth + 0.35
    assert lines[-2] == "scored_bases=6000"  # every base once, the N run not scored


def test_seq_pretrain__saves_a_reloadable_model_with_its_training_record(trained):
    config = json.loads((trained / "model" / "config.json").read_text())
    assert config["model"]["attention"] == "performer"
    assert config["summary"]["steps"] == 150
    model = SeqLM.from_pretrained(trained / "model")
    assert model.config.width == 32
    metrics = (trained / "model" / "metrics.csv").read_text().splitlines()
    # header + the starting point's validation + evaluations at steps 50, 100, 150
    assert len(metrics) == 1 + 1 + 3


def test_seq_embed__writes_one_vector_per_record(trained, capsys):
    out = trained / "emb.safetensors"
    code = main(
        ["seq", "embed", str(trained / "train.fa"), "--model", str(trained / "model"),
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    with safe_open(str(out), "np") as handle:
        embeddings = handle.get_tensor("embeddings")
        names = json.loads(handle.metadata()["names"])
    assert names == ["a", "b"] and embeddings.shape == (2, 32)
    assert np.isfinite(embeddings).all()


def test_seq_pretrain__bad_letter_is_a_one_line_error_without_output(tmp_path, capsys):
    write_fasta(tmp_path / "bad.fa", {"a": "ACGT" * 30 + "ACJT"})
    code = main(
        ["seq", "pretrain", str(tmp_path / "bad.fa"), "--out", str(tmp_path / "m")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0 and "bad.fa, line 3, column 53: 'J'" in err
    assert not (tmp_path / "m").exists()


def test_seq_evaluate__refuses_a_directory_without_a_model(tmp_path, capsys):
    write_fasta(tmp_path / "x.fa", {"a": "ACGT" * 10})
    code = main(["seq", "evaluate", str(tmp_path / "x.fa"), "--model", str(tmp_path)])
    assert code == 1
    assert "no config.json" in capsys.readouterr().err


def test_seq_pretrain__raises_when_sequence_is_shorter_than_the_context(
    tmp_path, capsys
):
    write_fasta(tmp_path / "short.fa", {"a": "ACGT" * 100})
    code = main(
        ["seq", "pretrain", str(tmp_path / "short.fa"), "--out", str(tmp_path / "m")]
    )
    assert code == 1
    assert "do not fill one window of context 1024" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_seq_pretrain__time_budget_stops_on_the_clock(tmp_path):
    write_fasta(tmp_path / "train.fa", {"a": order2_chain(20000, 1)})
    params = dict(
        width=16, depth=1, heads=2, features=16, chunk=16, context=64,
        batch_size=4, warmup_steps=2, eval_every=5, time_budget_s=2.0, progress=False,
        epochs=1000,  # an upper bound the clock reaches first
    )  # fmt: skip
    assert seq_pretrain(tmp_path / "train.fa", tmp_path / "m", params) == 0
    summary = json.loads((tmp_path / "m" / "config.json").read_text())["summary"]
    metrics = (tmp_path / "m" / "metrics.csv").read_text().splitlines()
    last = dict(zip(metrics[0].split(","), metrics[-1].split(","), strict=True))
    assert summary["steps"] == int(last["step"]) > 2  # past the warm-up
    # the last step ends past the budget (generous bound: the box may be loaded)
    assert 2.0 <= float(last["seconds"]) < 30.0
    # the clock, not the steps (a tiny share of 1000 epochs), annealed the LR, at
    # least half way, even when a loaded box makes the last step long
    assert float(last["lr"]) < 0.5 * 2e-3
