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

__version__ = "0.1.0"

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
