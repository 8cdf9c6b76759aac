"""Shared fixtures: the embedded wheat data set; one BLAS/torch thread per worker."""

import os

# pytest-xdist runs one worker per core: nested BLAS / torch threads would only fight
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from importlib import resources  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def wheat_paths():
    root = resources.files("gperceiver") / "datasets" / "wheat"
    return {
        "chroms": root / "chroms.tsv",
        "markers": root / "markers.tsv",
        "dosages": root / "markers_dosage.tsv",
        "phenotypes": root / "phenotypes.tsv",
    }


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped (with the reason) where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not a "gpu" param id
            item.add_marker(skip)


@pytest.fixture(params=["serial", "parallel"])
def kernel_launch(request, monkeypatch):
    """Run the CPU kernels (numba, gperceiver.nn.kernels, and C,
    gperceiver.nn.native) serially, or in parallel on two threads whatever
    their size."""
    # the kernel modules, imported so that Kernel.every lists their kernels
    from gperceiver.nn import (  # noqa: F401
        dropout,
        embedding_kernels,
        kernels,
        native,
        window_kernels,
    )
    from gperceiver.nn.kernels import Kernel

    if request.param == "parallel":
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        monkeypatch.setattr(kernels, "MIN_THREADS", 2)
        monkeypatch.setattr(native, "MIN_PARALLEL_WORK", 0)
        for k in Kernel.every:
            monkeypatch.setattr(k, "min_parallel", 0)
        yield "parallel"
        torch.set_num_threads(threads)
    else:
        yield "serial"


@pytest.fixture(params=["numba", "c"])
def cpu_backend(request, monkeypatch):
    """The CPU kernels that have a C version (window attention, marker tokens)
    as numba (``GPERCEIVER_NATIVE=0``) or as C (gperceiver.nn.native; skipped
    where no C compiler builds them)."""
    from gperceiver.nn import native

    if request.param == "numba":
        monkeypatch.setenv("GPERCEIVER_NATIVE", "0")
    else:
        monkeypatch.setenv("GPERCEIVER_NATIVE", "1")
        if native.library("window.c", HEADS=1, WIDTH=8) is None:
            pytest.skip("no C compiler builds gperceiver's native kernels here")
    return request.param
