"""Environment covariates keyed by environment name (``2019_Obregon``) work end
to end: evaluate, finetune and predict give what the same files with numbered
environments give, shown by name; mismatched keys are refused in one line."""

import numpy as np
import pandas as pd
import pytest

from gperceiver.cli import main
from gperceiver.data import EnvCovariates, Phenotypes
from gperceiver.io import (
    InputError,
    align_environments,
    read_covariates,
    write_chroms,
    write_covariates,
    write_markers,
    write_phenotypes,
)
from gperceiver.simulate import SimulationConfig, simulate

# natural order = the simulated block order, so both runs number them alike
NAMES = ["2019_Obregon", "2020_Obregon", "2021_Toluca", "2022_Toluca", "2023_Celaya"]
TINY = ["--width", "16", "--latents", "4", "--epochs", "2", "--no-progress"]
TINY += ["--threads", "1"]  # bitwise-reproducible training


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """The same trial twice, ``numbered/`` and ``named/``: environments 0-2
    phenotyped, covariates for 0-3 (3 a new environment) and, for predict, 0-4."""
    data = simulate(
        SimulationConfig(
            n_individuals=80, n_markers=150, chromosome_length_bp=10_000_000,
            n_qtl=20, n_environments=5, weather_days=20, n_folds=3, seed=4,
        )
    )  # fmt: skip
    root = tmp_path_factory.mktemp("trial")
    table = data.phenotypes.table
    table = table[table["block"] < 3]
    cov = data.covariates
    for kind in ("numbered", "named"):
        d = root / kind
        d.mkdir()
        rows = table if kind == "numbered" else table.assign(
            block=np.asarray(NAMES, dtype=object)[table["block"]]
        )  # fmt: skip
        write_phenotypes(Phenotypes(rows), d / "phenos.tsv")
        write_chroms(data.genotypes.markers, d / "chroms.tsv")
        write_markers(data.genotypes, d / "markers.tsv")
        for n, name in ((4, "cov.tsv"), (5, "cov_new.tsv")):
            names = NAMES[:n] if kind == "named" else None
            part = EnvCovariates(
                cov.environments[:n], cov.names, cov.values[:n], cov.times, "c", names
            )
            write_covariates(part, d / name)
    return root


def files(trial, kind):
    d = trial / kind
    return [str(d / f) for f in ("phenos.tsv", "chroms.tsv", "markers.tsv")]


def test_read_covariates__keeps_environment_names(trial):
    covariates = read_covariates(trial / "named" / "cov.tsv")
    assert covariates.environment_labels == NAMES[:4]
    assert covariates.environments.tolist() == [0, 1, 2, 3]
    numbered = read_covariates(trial / "numbered" / "cov.tsv")
    assert numbered.environment_labels is None
    np.testing.assert_allclose(covariates.values, numbered.values)


def test_evaluate_gblup_rn__named_environments_equal_numbered(trial, tmp_path):
    runs = {}
    for kind in ("numbered", "named"):
        out = tmp_path / kind
        cov = str(trial / kind / "cov.tsv")
        assert main(["evaluate", *files(trial, kind), "--methods", "gblup-rn",
                     "--scheme", "cv0", "--covariates", cov, "--quiet",
                     "--out", str(out)]) == 0  # fmt: skip
        runs[kind] = pd.read_csv(out / "predictions.tsv", sep="\t")
    numbered, named = runs["numbered"], runs["named"]
    assert named["block"].tolist() == [NAMES[b] for b in numbered["block"]]
    np.testing.assert_allclose(named["prediction"], numbered["prediction"])


def test_finetune_and_predict__named_covariates_equal_numbered(trial, tmp_path):
    tables = {}
    for kind in ("numbered", "named"):
        d = trial / kind
        model, fitted = tmp_path / f"{kind}-model", tmp_path / f"{kind}-fit.tsv"
        assert main(["finetune", *files(trial, kind), "--out", str(model),
                     "--covariates", str(d / "cov.tsv"), "--predictions",
                     str(fitted), *TINY]) == 0  # fmt: skip
        new = tmp_path / f"{kind}-new.tsv"
        assert main(["predict", str(d / "chroms.tsv"), str(d / "markers.tsv"),
                     "--model", str(model), "--covariates", str(d / "cov_new.tsv"),
                     "--out", str(new)]) == 0  # fmt: skip
        tables[kind] = (pd.read_csv(fitted, sep="\t"), pd.read_csv(new, sep="\t"))
    for numbered, named in zip(tables["numbered"], tables["named"], strict=True):
        assert named["block"].tolist() == [NAMES[b] for b in numbered["block"]]
        np.testing.assert_allclose(named["prediction"], numbered["prediction"])
    fitted, new = tables["named"]
    assert set(fitted["block"]) == set(NAMES[:4])  # the covariates-only one too
    assert set(new["block"]) == set(NAMES)  # and one new to the model
    assert new["prediction"].notna().all()


def test_align_environments__raises_on_mismatched_keys():
    values = np.zeros((2, 1, 1))
    named = EnvCovariates(np.arange(2), ["rain"], values, None, "c.tsv", ["a", "b"])
    with pytest.raises(InputError, match="named here"):
        align_environments(named, None, "phenos.tsv")
    with pytest.raises(InputError, match="no environment is named as in"):
        align_environments(named, ["x", "y"], "phenos.tsv")
    # whole numbers name environments of a named table: "2019"
    numbered = EnvCovariates(np.array([2019, 2020]), ["rain"], values, None, "c.tsv")
    aligned, labels = align_environments(numbered, ["2020", "x"], "phenos.tsv")
    assert labels == ["2020", "x", "2019"] and aligned.environments.tolist() == [0, 2]
    assert aligned.environment_labels == ["2020", "2019"]


def test_finetune__named_covariates_for_numbered_phenotypes_is_one_line(
    trial, tmp_path, capsys
):
    cov = str(trial / "named" / "cov.tsv")
    code = main(["finetune", *files(trial, "numbered"), "--out", str(tmp_path / "m"),
                 "--covariates", cov, *TINY])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "cov.tsv" in err[0], err
    assert not (tmp_path / "m").exists()
