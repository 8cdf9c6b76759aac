"""Environment covariates: reading and validation, weather-driven simulation,
environment cross-validation schemes, reaction-norm GBLUP and the environment
encoder."""

import dataclasses

import numpy as np
import pytest

from gperceiver.cli import main
from gperceiver.io import InputError, read_covariates, write_covariates
from gperceiver.simulate import SimulationConfig, simulate


def write(tmp_path, text, name="covariates.tsv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_covariates__static_one_row_per_block(tmp_path):
    path = write(tmp_path, "block\tlat\tclay\n2\t40.5\t0.3\n0\t38\t0.1\n")
    cov = read_covariates(path)
    assert cov.blocks.tolist() == [0, 2] and cov.names == ["lat", "clay"]
    assert not cov.is_series
    assert cov.values.shape == (2, 1, 2)
    assert cov.values[:, 0].tolist() == [[38.0, 0.1], [40.5, 0.3]]
    assert cov.summary().tolist() == [[38.0, 0.1], [40.5, 0.3]]


def test_read_covariates__series_sorted_by_time_and_round_trips(tmp_path):
    text = "block\ttime\ttemp\train\n"
    rows = [(b, t, 20 + b + t, t % 2) for b in (1, 0) for t in (3, 1, 2, 4)]
    text += "".join(f"{b}\t{t}\t{x}\t{r}\n" for b, t, x, r in rows)
    cov = read_covariates(write(tmp_path, text))
    assert cov.is_series and cov.times.tolist() == [1, 2, 3, 4]
    assert cov.values.shape == (2, 4, 2)
    assert cov.values[1, :, 0].tolist() == [22, 23, 24, 25]  # block 1, temp by time
    # two windows: mean of times 1-2 and 3-4, per covariate
    assert cov.summary(2)[0].tolist() == [21.5, 23.5, 0.5, 0.5]
    write_covariates(cov, tmp_path / "out.tsv")
    again = read_covariates(tmp_path / "out.tsv")
    assert np.array_equal(again.values, cov.values)
    assert np.array_equal(again.times, cov.times)


@pytest.mark.parametrize(
    "text, where, problem",
    [
        ("env\tlat\n0\t1\n", "line 1", "expected the covariates columns"),
        ("block\n0\n", "line 1", "no covariate column"),
        ("block\tlat\n0\t1\n-1\t2\n", "line 3, column 'block'", "not a non-negative"),
        ("block\tlat\n0\t1\n1\tabc\n", "line 3, column 'lat'", "not a number"),
        ("block\tlat\n0\t1\n1\tNA\n", "line 3, column 'lat'", "value is missing"),
        ("block\tlat\n0\t1\n0\t2\n", "line 3, column 'block'", "duplicate block"),
        ("block\ttime\tt\n0\t1\t5\n0\t1\t6\n", "line 3, column 'time'", "twice"),
        ("block\ttime\tt\n0\tx\t5\n", "line 2, column 'time'", "not a number"),
        (
            "block\ttime\tt\n0\t1\t5\n0\t2\t5\n1\t1\t5\n",
            "line 4, column 'time'",
            "block 1 lacks time 2",
        ),
        (
            "block\ttime\tt\n0\t1\t5\n1\t1\t5\n1\t7\t5\n",
            "line 4, column 'time'",
            "block 1 has extra time 7",
        ),
    ],
)
def test_read_covariates__raises_on_bad_input(tmp_path, text, where, problem):
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=problem) as err:
        read_covariates(path)
    assert err.value.where.startswith(where)
    assert str(path) in str(err.value)


WEATHER = SimulationConfig(
    n_individuals=150,
    n_markers=300,
    n_chromosomes=2,
    chromosome_length_bp=30_000_000,
    n_qtl=30,
    n_environments=8,
    gxe_correlation=0.5,
    weather_days=60,
    n_folds=5,
    seed=3,
)


@pytest.fixture(scope="module")
def weather_sim():
    return simulate(WEATHER)


def test_simulate__weather_drives_low_rank_interaction(weather_sim):
    cov = weather_sim.covariates
    assert cov.values.shape == (8, 60, 3) and cov.names == [
        "temperature",
        "rain",
        "radiation",
    ]
    assert (cov.values[:, :, 1] >= 0).all()  # rain
    wide = weather_sim.truth.pivot(index="name", columns="block", values="additive")
    centred = wide.to_numpy() - wide.to_numpy().mean(0)
    singular = np.linalg.svd(centred, compute_uv=False)
    # main effect + 3 stress sensitivities: rank 4 out of 8 environments
    assert singular[4] < 1e-8 * singular[0] < singular[3]
    # same without weather: every environment has its own random deviation
    plain = simulate(dataclasses.replace(WEATHER, weather_days=0)).truth
    wide = plain.pivot(index="name", columns="block", values="additive").to_numpy()
    assert np.linalg.svd(wide - wide.mean(0), compute_uv=False)[7] > 1e-3


def test_simulate__weather_cli_writes_covariates(tmp_path):
    out = tmp_path / "sim"
    code = main(
        ["simulate", "--out", str(out), "--individuals", "60", "--markers", "200",
         "--qtl", "20", "--environments", "3", "--weather-days", "30", "--folds", "3"]
    )  # fmt: skip
    assert code == 0
    cov = read_covariates(out / "covariates.tsv")
    assert cov.blocks.tolist() == [0, 1, 2] and cov.values.shape == (3, 30, 3)
