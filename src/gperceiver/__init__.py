"""gperceiver: genomic prediction with Perceiver transformers, next to GBLUP.

Data flows one way: ``io`` (files) -> ``data`` (Genotypes, Phenotypes) -> ``nn``
(models) -> ``tasks`` (objectives) -> ``train`` (the loop) -> ``evaluate`` /
``report``; ``baselines`` (GBLUP, RKHS) and ``simulate`` stand beside them, and
``cli`` only parses options and calls one function per command.
"""

__version__ = "0.1.0"
