"""Shared fixtures: the embedded wheat data set."""

from importlib import resources

import pytest


@pytest.fixture(scope="session")
def wheat_paths():
    root = resources.files("gperceiver") / "datasets" / "wheat"
    return {
        "chroms": root / "chroms.tsv",
        "markers": root / "markers.tsv",
        "dosages": root / "markers_dosage.tsv",
        "phenotypes": root / "phenotypes.tsv",
    }
