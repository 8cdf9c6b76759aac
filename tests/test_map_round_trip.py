"""Marker maps survive a round trip: a model trained on a map with fine float
positions (Mb with many decimals, markers 1e-9 apart) accepts its own map again in
every command that saves a model and then reads it (pretrain, impute, finetune,
predict, evaluate)."""

import json

import numpy as np
import pandas as pd
import pytest

from gperceiver.cli import main
from gperceiver.data import MarkerMap
from gperceiver.io import read_chroms, write_chroms
from gperceiver.io.tables import exact_number

TINY = ["--max-steps", "2", "--width", "16", "--latents", "4", "--no-progress"]


def fine_positions(n: int, rng) -> np.ndarray:
    """Positions in Mb as a real map holds them: ``0.117509935``-like values,
    and a run of markers only 1e-9 apart (which ``%.10g`` would merge)."""
    pos = np.sort(rng.uniform(0.1, 250.0, n))
    pos[0] = 0.117509935
    pos[1 : n // 4] = 1.0 + 1e-9 * np.arange(1, n // 4)
    return np.sort(pos)


def test_write_chroms__positions_read_back_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    pos = np.concatenate(
        [
            fine_positions(400, rng),
            rng.uniform(0, 1, 200) * 10.0 ** rng.integers(-12, 9, 200),
            np.arange(1, 101) * 1000.0,  # bp: written without a decimal point
        ]
    )
    markers, _ = MarkerMap.from_columns(
        np.repeat(["1", "2", "10"], [400, 200, 100]),
        [f"m{i}" for i in range(len(pos))],
        pos,
    )
    write_chroms(markers, tmp_path / "chroms.tsv")
    back = read_chroms(tmp_path / "chroms.tsv")
    assert back.pos.tobytes() == markers.pos.tobytes()
    assert back.fingerprint() == markers.fingerprint()
    text = (tmp_path / "chroms.tsv").read_text()
    assert "\t1000\n" in text and "0.117509935" in text


@pytest.mark.parametrize(
    "value", [0.117509935, 1.000000001, 1e-9, 123456789.123, 5e-324, -0.0, 7.0]
)
def test_exact_number__reads_back_as_the_same_float(value):
    text = exact_number(value)
    assert float(text) == value and str(np.signbit(float(text))) == str(
        np.signbit(value)
    )


@pytest.fixture(scope="module")
def fine_map_data(tmp_path_factory):
    """A small simulated set whose chroms table holds fine float Mb positions."""
    out = tmp_path_factory.mktemp("finemap")
    code = main(
        ["simulate", "--out", str(out), "--individuals", "40", "--markers", "60"]
        + ["--chromosomes", "2", "--missing-rate", "0.05", "--folds", "2"]
        + ["--environments", "1", "--qtl", "10"]
    )
    assert code == 0
    chroms = pd.read_csv(out / "chroms.tsv", sep="\t", dtype=str)
    rng = np.random.default_rng(1)
    for c in chroms["chr"].unique():
        rows = chroms["chr"] == c
        chroms.loc[rows, "pos"] = [
            repr(float(v)) for v in fine_positions(rows.sum(), rng)
        ]
    chroms.to_csv(out / "chroms.tsv", sep="\t", index=False)
    assert "0.117509935" in (out / "chroms.tsv").read_text()
    return out


def run(*args) -> None:
    assert main([str(a) for a in args]) == 0


def test_fine_map__every_command_accepts_its_own_model(fine_map_data, tmp_path):
    d = fine_map_data
    chroms, markers, phenos = d / "chroms.tsv", d / "markers.tsv", d / "phenotypes.tsv"
    given = read_chroms(chroms)

    run("pretrain", chroms, markers, "--out", tmp_path / "pre", *TINY)
    saved = read_chroms(tmp_path / "pre" / "markers.tsv")
    assert saved.pos.tobytes() == given.pos.tobytes()
    config = json.loads((tmp_path / "pre" / "config.json").read_text())
    assert config["markers"] == given.fingerprint()

    run(
        "impute",
        chroms,
        markers,
        "--model",
        tmp_path / "pre",
        "--out",
        tmp_path / "a.tsv",
    )
    # one-shot impute: trains, saves, reloads its own model
    run("impute", chroms, markers, "--out", tmp_path / "b.tsv", *TINY)
    assert (tmp_path / "b.tsv").exists()

    for pretrained in ([], ["--pretrained", tmp_path / "pre"]):
        out = tmp_path / f"fine{len(pretrained)}"
        run(
            "finetune",
            phenos,
            chroms,
            markers,
            "--out",
            out,
            "--cv",
            1,
            *pretrained,
            *TINY,
        )
        run("predict", chroms, markers, "--model", out, "--out", out / "p.tsv")
        assert len(pd.read_csv(out / "p.tsv", sep="\t")) == 40

    run(
        "evaluate", phenos, chroms, markers, "--out", tmp_path / "ev", "--quiet",
        "--methods", "gblup,perceiver-pretrained", *TINY[:-1],
    )  # fmt: skip
    accuracy = pd.read_csv(tmp_path / "ev" / "accuracy.tsv", sep="\t")
    assert set(accuracy["method"]) == {"gblup", "perceiver-pretrained"}


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--params", "contrastive.json", "--method", "masked"], "--task"),
        (["--output-format", "dosage"], None),
    ],
)
def test_one_shot_impute__refuses_before_training(
    fine_map_data, tmp_path, capsys, extra, option
):
    """A refusal that one-shot impute would reach after training comes first."""
    d = fine_map_data
    (tmp_path / "contrastive.json").write_text('{"task": "contrastive"}')
    extra = [tmp_path / e if e.endswith(".json") else e for e in extra]
    args = [d / "chroms.tsv", d / "markers.tsv", "--out", tmp_path / "x.tsv", *extra]
    if option is None:  # dosage output of a 3-allele table: simulate one
        run("simulate", "--out", tmp_path / "s3", "--individuals", "20",
            "--markers", "30", "--n-alleles", "3", "--qtl", "5")  # fmt: skip
        args = [tmp_path / "s3" / "chroms.tsv", tmp_path / "s3" / "markers.tsv",
                "--n-alleles", "3", "--out", tmp_path / "x.tsv", *extra]  # fmt: skip
        option = "--output-format"
    code = main(["impute", *map(str, args), "--max-steps", "100000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 1
        and len(err) == 1
        and err[0].startswith(f"gperceiver: error: {option}")
    )
    assert not (tmp_path / "x.tsv.model").exists() and not (tmp_path / "x.tsv").exists()
