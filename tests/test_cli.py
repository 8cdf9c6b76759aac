"""The command line: exit codes, one-line errors, no partial output, option precedence."""

import json

import numpy as np
import pandas as pd
import pytest

from gperceiver.checkpoint import read_json
from gperceiver.cli import main, seed_pretrain
from gperceiver.io import read_chroms, read_dosages, read_marker_weights, read_markers


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert (
        main(
            [
                "simulate",
                "--out",
                str(out),
                "--individuals",
                "60",
                "--markers",
                "120",
                "--chromosomes",
                "2",
                "--missing-rate",
                "0.05",
                "--folds",
                "3",
                "--environments",
                "2",
                "--qtl",
                "10",
            ]
        )
        == 0
    )
    return out


def test_simulate__writes_tables_that_read_back(simulated):
    g = read_markers(simulated / "markers.tsv", read_chroms(simulated / "chroms.tsv"))
    assert g.alleles.shape == (60, 120, 2)
    truth = pd.read_csv(simulated / "truth.tsv", sep="\t")
    assert {"name", "block", "additive", "genetic"} <= set(truth.columns)
    qtl = pd.read_csv(simulated / "qtl.tsv", sep="\t")
    assert qtl["marker"].tolist() == g.markers.names.tolist()
    assert qtl["qtl"].sum() == 10  # --qtl 10
    assert read_marker_weights(simulated / "qtl.tsv", g.markers).sum() == 10


def test_cli__bad_input_exits_nonzero_with_one_line_and_no_output(
    simulated, tmp_path, capsys
):
    bad = tmp_path / "markers.tsv"
    lines = (simulated / "markers.tsv").read_text().splitlines()
    fields = lines[3].split("\t")
    fields[5] = "7"
    lines[3] = "\t".join(fields)
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            str(simulated / "phenotypes.tsv"),
            str(simulated / "chroms.tsv"),
            str(bad),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "line 4" in err[0] and "code 7 is outside 0..5" in err[0]
    assert not out.exists()


def test_pretrain__typed_options_override_params_file_only_when_given(
    simulated, tmp_path
):
    params = tmp_path / "params.json"
    params.write_text(
        json.dumps(
            {
                "width": 16,
                "n_latents": 4,
                "lr": 0.01,
                "batch_size": 8,
                "max_steps": 2,
                "target_fraction": 0.2,
            }
        )
    )
    args = [
        str(simulated / "chroms.tsv"),
        str(simulated / "markers.tsv"),
        "--params",
        str(params),
        "--no-progress",
    ]
    assert (
        seed_pretrain(
            [*args, "--model", str(tmp_path / "a"), "--lr", "0.002", "--prop-y", "0.3"]
        )
        == 0
    )
    config = read_json(tmp_path / "a" / "config.json")
    assert config["train"]["lr"] == 0.002 and config["masked"]["target_fraction"] == 0.3
    assert config["train"]["batch_size"] == 8 and config["model"]["width"] == 16
    assert seed_pretrain([*args, "--model", str(tmp_path / "b")]) == 0
    config = read_json(tmp_path / "b" / "config.json")
    assert config["train"]["lr"] == 0.01 and config["masked"]["target_fraction"] == 0.2


def test_pretrain__unknown_params_key_is_an_input_error(simulated, tmp_path, capsys):
    params = tmp_path / "params.json"
    params.write_text('{"widht": 16}')
    code = main(
        [
            "pretrain",
            str(simulated / "chroms.tsv"),
            str(simulated / "markers.tsv"),
            "--out",
            str(tmp_path / "m"),
            "--params",
            str(params),
        ]
    )
    assert code == 1
    assert "key 'widht': unknown hyper-parameter" in capsys.readouterr().err


def test_impute__one_shot_writes_complete_dosages(simulated, tmp_path):
    out = tmp_path / "imputed.tsv"
    code = main(
        [
            "impute",
            str(simulated / "chroms.tsv"),
            str(simulated / "markers.tsv"),
            "--out",
            str(out),
            "--output-format",
            "dosage",
            "--method",
            "masked",
            "--max-steps",
            "3",
            "--width",
            "16",
            "--latents",
            "4",
            "--no-progress",
        ]
    )
    assert code == 0
    original = read_markers(
        simulated / "markers.tsv", read_chroms(simulated / "chroms.tsv")
    )
    filled = read_dosages(out, original.markers)
    assert (filled.alleles > 0).all()
    complete = (original.alleles > 0).all(-1)
    assert np.array_equal(filled.alleles[complete], original.alleles[complete])
    # the one-shot pretraining is bounded in time unless told otherwise
    config = json.loads((tmp_path / "imputed.tsv.model" / "config.json").read_text())
    assert config["train"]["time_budget_s"] == 1800.0


def _typed_actions(parser):
    """(command, dest) of every option that overrides --params only when typed."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for command, dest in _typed_actions(sub):
                    yield f"{name} {command}".strip(), dest
        elif action.default is argparse.SUPPRESS and action.dest not in (
            "help",
            "version",
        ):
            yield "", action.dest


def test_typed_options__every_override_option_is_a_config_field_and_reaches_it():
    """No option can be dropped on its way to the configs: each one that
    overrides --params only when typed names a config field, and typed_options
    passes it on."""
    from gperceiver.cli import build_parser
    from gperceiver.cli.options import CONFIG_FIELDS, typed_options

    parser = build_parser()
    typed = list(_typed_actions(parser))
    assert len(typed) > 20
    assert [pair for pair in typed if pair[1] not in CONFIG_FIELDS] == []
    args = parser.parse_args(
        ["finetune", "p.tsv", "c.tsv", "m.tsv", "--out", "o", "--lr", "0.1",
         "--marker-weights", "w.tsv", "--ploidy", "4"]
    )  # fmt: skip
    assert typed_options(args) == {"lr": 0.1, "marker_weights": "w.tsv"}
