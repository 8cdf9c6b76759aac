"""gperceiver: genomic prediction with Perceiver transformers, next to GBLUP.

Data flows one way: ``io`` (files) -> ``data`` (Genotypes, Phenotypes) -> ``nn``
(models) -> ``tasks`` (objectives) -> ``train`` (the loop) -> ``evaluate`` /
``report``; ``baselines`` (GBLUP, RKHS) and ``simulate`` stand beside them, and
``cli`` only parses options and calls one function per command.

The Python API (:mod:`gperceiver.api`) is here by name: ``import gperceiver as
gp``, then ``gp.read_genotypes``, ``gp.read_phenotypes``, ``gp.Genotypes``,
``gp.GBLUP``, ``gp.RKHS``, ``gp.Perceiver``, ``gp.cross_validate``. They load on
first use, so ``import gperceiver`` itself imports neither numpy nor torch (the
Perceiver loads torch when it fits or loads a model).
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# torch's CPU threads are GNU OpenMP's, whose idle workers spin for
# GOMP_SPINCOUNT iterations after each parallel region: 300,000 by default,
# about 4 ms of a core on the session-13 box. The numba kernels' threads
# (nn.kernels) then share a core with a spinning worker and run at serial
# speed. 20,000 (~0.5 ms) still bridges the gaps between torch's operators: a
# 10k-marker train step on two threads 0.121 -> 0.111 s, 100k 0.91 -> 0.88 s
# (BENCHMARKS.md, Scale, session 13). It must be set before torch loads, so
# here; a value in the environment wins.
if "torch" not in _sys.modules:
    _os.environ.setdefault("GOMP_SPINCOUNT", "20000")

_API = (
    "GBLUP",
    "RKHS",
    "Genotypes",
    "Perceiver",
    "Phenotypes",
    "cross_validate",
    "read_genotypes",
    "read_phenotypes",
)

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The API's names, imported from :mod:`gperceiver.api` on first use."""
    if name in _API:
        from . import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gperceiver' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
