"""Writers of imputed genotypes: code or dosage tables, or the genotype
probabilities of every imputed locus."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tables import write_dosages, write_markers, write_table

IMPUTATION_FORMATS = ("codes", "dosage", "probabilities")


def write_imputation(result, path, output_format: str = "codes") -> None:
    """Write ``result`` (a :class:`~gperceiver.pretraining.Imputation`: filled
    ``genotypes``, and per imputed locus its ``rows``, ``loci`` and
    ``probabilities`` ``(K, G)`` over the ``complete`` ``(G, A)`` genotypes).

    ``codes`` / ``dosage``: the filled genotypes as a markers or dosage table;
    ``probabilities``: long format ``name, marker, <one column per complete
    genotype, labelled by its alleles, e.g. 1/1/2>``, imputed loci only.
    """
    genotypes = result.genotypes
    if output_format == "codes":
        write_markers(genotypes, path)
    elif output_format == "dosage":
        write_dosages(genotypes, path)
    elif output_format == "probabilities":
        labels = [
            "/".join(map(str, np.repeat(np.arange(1, len(c) + 1), c)))
            for c in result.complete
        ]
        frame = pd.DataFrame(result.probabilities, columns=labels)
        frame.insert(0, "marker", genotypes.markers.names[result.loci])
        frame.insert(0, "name", genotypes.names[result.rows])
        write_table(frame, path, float_format="%.4f")
    else:
        raise ValueError(f"output_format must be one of {IMPUTATION_FORMATS}")
