"""What a report says about its inputs and fits: the data summary (individuals,
markers, missing genotypes, minor allele frequencies, records per environment)
and the heritability the kernel baselines estimated, as tables and report
sections.

Shape letters: N individuals, M markers, A alleles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import Genotypes, Phenotypes
from .html import Section
from .plots import plot_maf_spectrum

# 10 bins of width 0.05; rounded so that an edge is the double nearest to 0.3 etc.,
# as a frequency of 0.3 computed from counts is
MAF_BINS = np.round(np.linspace(0.0, 0.5, 11), 2)


@dataclass(frozen=True)
class DataSummary:
    """The inputs of a run, as the report shows them."""

    n_individuals: int  # genotyped
    n_phenotyped: int  # individuals with at least one record
    n_records: int
    n_markers: int
    n_chromosomes: int
    missing_rate: float  # share of allele copies not called
    maf: np.ndarray  # (M,) 1 - frequency of the commonest allele
    records: pd.DataFrame  # environment, records, individuals, mean, sd


def minor_allele_frequency(genotypes: Genotypes) -> np.ndarray:
    """``1 - max_a p_ma`` ``(M,)`` over called copies: the minor allele's
    frequency for a biallelic marker, that of every allele but the commonest
    otherwise (summed, so a biallelic marker's is exactly its rarer allele's)."""
    return np.sort(genotypes.allele_frequencies(), axis=1)[:, :-1].sum(1)


def maf_spectrum(maf: np.ndarray) -> pd.DataFrame:
    """Markers per MAF bin (:data:`MAF_BINS`, closed on the left; 0.5 falls in
    the last): ``bin`` text ``[lo, hi)`` and ``markers``."""
    index = np.clip(np.searchsorted(MAF_BINS, maf, side="right") - 1, 0, 9)
    counts = np.bincount(index, minlength=len(MAF_BINS) - 1)
    labels = [
        f"{lo:.2f}–{hi:.2f}" for lo, hi in zip(MAF_BINS[:-1], MAF_BINS[1:], strict=True)
    ]
    return pd.DataFrame({"maf": labels, "markers": counts})


def data_summary(genotypes: Genotypes, phenotypes: Phenotypes) -> DataSummary:
    """:class:`DataSummary` of ``genotypes`` and the records of ``phenotypes``
    (environments by name)."""
    table = phenotypes.named_environments(phenotypes.table)
    codes = phenotypes.table["block"].to_numpy()
    groups = table.assign(code=codes).groupby("code", sort=True)
    records = pd.DataFrame(
        {
            "environment": groups["block"].first().astype(str).to_numpy(),
            "records": groups.size().to_numpy(),
            "individuals": groups["name"].nunique().to_numpy(),
            "mean": groups["response"].mean().to_numpy(),
            "sd": groups["response"].std().to_numpy(),
        }
    )
    return DataSummary(
        n_individuals=genotypes.n_individuals,
        n_phenotyped=int(table["name"].nunique()),
        n_records=len(table),
        n_markers=genotypes.n_markers,
        n_chromosomes=len(np.unique(genotypes.markers.chrom)),
        missing_rate=genotypes.missing_rate(),
        maf=minor_allele_frequency(genotypes),
        records=records,
    )


def heritability_table(components: pd.DataFrame) -> pd.DataFrame:
    """REML ``h2`` of each method and environment over the folds of
    ``variance_components`` rows: ``method, environment, folds, mean, sd, min,
    max`` (``sd`` NaN for one fold)."""
    h2 = components[components["component"] == "h2"]
    groups = h2.groupby(["method", "block"], sort=False)["value"]
    table = groups.agg(["count", "mean", "std", "min", "max"]).reset_index()
    table.columns = ["method", "environment", "folds", "mean", "sd", "min", "max"]
    return table


DATA_TEXT = (
    "{n_individuals} genotyped individuals ({n_phenotyped} with records, "
    "{n_records} records), {n_markers} markers on {n_chromosomes} chromosome(s); "
    "{missing:.2%} of the allele copies were not called (missing genotypes are "
    "filled with the marker's mean by the kernels and read as missing by the "
    "network)."
)
MAF_TEXT = (
    "Minor allele frequency (MAF): how common the rarer allele of a marker is "
    "(for a marker with more than two alleles, every allele but the commonest). "
    "Markers with a MAF near 0 are nearly fixed and carry little information; "
    "many of them point to a narrow or strongly selected population."
)
H2_TEXT = (
    "The heritability h² that each kernel baseline estimated by REML on the "
    "training records of each fold: the share of the variance (after the fixed "
    "effects) that the kernel attributes to genetics, on the kernel's scale (for "
    "GBLUP: VanRaden's G, about the narrow-sense h² in an outbred population). "
    "A mean well below the fold-to-fold spread, or h² at 0 or 1, means the "
    "kernel found no stable genetic signal. The square root of h² bounds the "
    "accuracy r a method can reach."
)


def data_section(out: Path, summary: DataSummary) -> Section:
    """The report's "Data" section: counts, the MAF histogram, records per
    environment."""
    text = DATA_TEXT.format(
        missing=summary.missing_rate,
        **{k: getattr(summary, k) for k in (
            "n_individuals", "n_phenotyped", "n_records", "n_markers",
            "n_chromosomes",
        )},
    )  # fmt: skip
    spectrum = maf_spectrum(summary.maf)
    figure = plot_maf_spectrum(spectrum, out / "maf_spectrum.png")
    records = summary.records.set_index("environment")
    records.index.name = None
    return Section(
        "Data",
        [text, MAF_TEXT],
        [figure],
        {
            "Records per environment (response mean and sd)": records,
            "Markers per MAF bin": spectrum.set_index("maf").T,
        },
    )


def heritability_section(components: pd.DataFrame) -> Section | None:
    """The report's "Estimated heritability" section (None without h² rows)."""
    table = heritability_table(components)
    if table.empty:
        return None
    caption = "REML h² per method and environment over the folds"
    return Section(
        "Estimated heritability", [H2_TEXT], [], {caption: table.set_index("method")}
    )
