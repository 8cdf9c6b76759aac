"""Readers and writers: the only place that knows file formats."""

from .atomic import atomic_directory, atomic_path
from .errors import InputError, InputWarning
from .formats import (
    genotype_format,
    read_genotype_file,
    read_table_genotypes,
    stream_to_zarr,
    write_genotype_file,
)
from .tables import (
    match_phenotypes,
    read_annotations,
    read_chroms,
    read_covariates,
    read_dosages,
    read_marker_graph,
    read_marker_weights,
    read_markers,
    read_phenotypes,
    write_chroms,
    write_covariates,
    write_dosages,
    write_markers,
    write_phenotypes,
    write_table,
)

__all__ = [
    "InputError",
    "InputWarning",
    "atomic_directory",
    "atomic_path",
    "genotype_format",
    "read_genotype_file",
    "read_table_genotypes",
    "stream_to_zarr",
    "write_genotype_file",
    "match_phenotypes",
    "read_annotations",
    "read_marker_weights",
    "read_chroms",
    "read_covariates",
    "read_dosages",
    "read_marker_graph",
    "read_markers",
    "read_phenotypes",
    "write_chroms",
    "write_covariates",
    "write_dosages",
    "write_markers",
    "write_phenotypes",
    "write_table",
]
