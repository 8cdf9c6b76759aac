"""Environment covariates: reading and validation, weather-driven simulation,
environment cross-validation schemes, reaction-norm GBLUP and the environment
encoder."""

import numpy as np
import pytest

from gperceiver.io import InputError, read_covariates, write_covariates


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
