"""Every user mistake: one line naming the option or file and the fix, exit code 1,
nothing written. Plus the operations options: --version, --threads, --progress and
the run log."""

import json

import pytest
import torch

from gperceiver import __version__
from gperceiver.cli import main

TINY = ["--max-steps", "1", "--width", "16", "--latents", "4"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    args = ["simulate", "--out", str(out), "--individuals", "30", "--markers", "40"]
    assert main([*args, "--qtl", "5", "--folds", "3", "--environments", "2"]) == 0
    return out


def data(sim):
    return [
        str(sim / "phenotypes.tsv"),
        str(sim / "chroms.tsv"),
        str(sim / "markers.tsv"),
    ]


def refused(capsys, tmp_path, argv, *expected):
    """Run ``argv``; assert exit 1, one stderr line holding ``expected``, no output."""
    out = tmp_path / "out"
    code = main([*map(str, argv), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert len(err) == 1, err
    assert err[0].startswith("gperceiver") and ": error: " in err[0], err
    for text in expected:
        assert text in err[0], err
    assert not out.exists()
    return err[0]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            ["--methods", "gblup,foo"],
            ["--methods", "unknown method(s) foo", "use some of"],
        ),
        (
            ["--methods", "gblup", "--scheme", "cv0"],
            ["--methods", "gblup-main or gblup-rn"],
        ),
        (["--meth", "gblup"], ["unrecognized arguments: --meth"]),  # no abbreviations
        (["--scheme", "cv9"], ["argument --scheme", "invalid choice"]),
        (["--threads", "0"], ["--threads", "not positive"]),
    ],
)
def test_evaluate__mistakes_are_one_line(sim, tmp_path, capsys, extra, expected):
    refused(capsys, tmp_path, ["evaluate", *data(sim), "--quiet", *extra], *expected)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--lr", "-1"], ["--lr", "lr must be positive"]),
        (["--batch-size", "0"], ["--batch-size", "batch_size must be positive"]),
        (["--width", "0"], ["width must be positive"]),
        (["--cv", "99"], ["--cv", "cv == '99'", "folds (0, 1, 2)"]),
        (["--pretrained", "no-such-model"], ["no-such-model", "no config.json"]),
        (["--params", "PARAMS"], ["key 'ensemble'", "'2' is not of type int"]),
    ],
)
def test_finetune__mistakes_are_one_line(sim, tmp_path, capsys, extra, expected):
    params = tmp_path / "p.json"
    params.write_text('{"ensemble": "2"}')
    extra = [str(params) if e == "PARAMS" else e for e in extra]
    refused(capsys, tmp_path, ["finetune", *data(sim), *TINY, *extra], *expected)


def test_predict__missing_model_is_one_line(sim, tmp_path, capsys):
    genotypes = data(sim)[1:]
    refused(
        capsys, tmp_path, ["predict", *genotypes, "--model", tmp_path / "none"],
        "no config.json", "pass a directory written by gperceiver",
    )  # fmt: skip


def test_simulate__bad_settings_are_one_line(tmp_path, capsys):
    refused(capsys, tmp_path, ["simulate", "--qtl", "0"], "n_qtl must be between")


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"gperceiver {__version__}"


def test_threads_and_run_log(sim, tmp_path):
    before = torch.get_num_threads()
    try:
        out = tmp_path / "ev"
        argv = ["evaluate", *data(sim), "--quiet", "--out", str(out), "--threads", "1"]
        assert main(argv) == 0
        assert torch.get_num_threads() == 1
        log = json.loads((out / "gperceiver.log").read_text())
        assert log["gperceiver"] == __version__ and log["status"] == "finished"
        assert log["command"].startswith("gperceiver evaluate ")
        assert log["threads"] == {"torch": 1, "blas": 1}
        assert (
            log["inputs"]["phenos"]["bytes"] == (sim / "phenotypes.tsv").stat().st_size
        )
        assert log["wall_seconds"] >= 0 and log["peak_rss_mib"] > 0
        assert log["options"]["methods"] == "gblup,rkhs"
    finally:
        torch.set_num_threads(before)


def test_progress_bars_only_on_a_terminal_unless_asked(sim, tmp_path):
    genotypes = data(sim)[1:]
    base = ["pretrain", *genotypes, *TINY]
    assert main([*base, "--out", str(tmp_path / "auto")]) == 0  # stderr: no terminal
    assert main([*base, "--out", str(tmp_path / "forced"), "--progress"]) == 0
    auto = json.loads((tmp_path / "auto" / "config.json").read_text())
    forced = json.loads((tmp_path / "forced" / "config.json").read_text())
    assert auto["train"]["progress"] is False and forced["train"]["progress"] is True


def test_out__another_finished_run_is_refused_before_work_then_restarted(
    sim, tmp_path, capsys
):
    out = tmp_path / "ev"
    base = ["evaluate", *data(sim), "--quiet", "--out", str(out)]
    assert main([*base, "--methods", "gblup"]) == 0
    assert main([*base, "--methods", "gblup"]) == 0  # the same run: accepted
    before = (out / "accuracy.tsv").read_bytes()
    capsys.readouterr()
    assert main([*base, "--methods", "rkhs"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run with other options" in err[0], err
    assert "--restart" in err[0]
    assert (out / "accuracy.tsv").read_bytes() == before  # nothing written
    assert main([*base, "--methods", "rkhs", "--restart"]) == 0
    assert "rkhs" in (out / "accuracy.tsv").read_text()


def test_out__a_file_is_refused(sim, tmp_path, capsys):
    (tmp_path / "out").write_text("not a directory")
    code = main(["evaluate", *data(sim), "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "is a file" in err[0]
    assert (tmp_path / "out").read_text() == "not a directory"


@pytest.mark.parametrize(
    "name, expected", [("g.foo", "unknown output suffix"), ("g.pgen", "PLINK 2")]
)
def test_convert__unknown_or_read_only_output_is_refused(
    sim, tmp_path, capsys, name, expected
):
    args = ["convert", str(sim / "markers.tsv"), str(tmp_path / name)]
    code = main([*args, "--chroms", str(sim / "chroms.tsv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and expected in err[0], err
    assert list(tmp_path.iterdir()) == []
