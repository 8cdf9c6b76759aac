"""Readers and writers: the only place that knows file formats."""

from .atomic import atomic_directory, atomic_path
from .errors import InputError, InputWarning
from .formats import (
    SOURCES,
    TARGETS,
    convert_variants,
    genotype_format,
    read_genotype_file,
    read_name_list,
    read_table_genotypes,
    stream_to_zarr,
    write_genotype_file,
)
from .imputed import IMPUTATION_FORMATS, write_imputation
from .marker_files import (
    read_annotations,
    read_marker_graph,
    read_marker_inputs,
    read_marker_weights,
)
from .tables import (
    read_chroms,
    read_dosages,
    read_markers,
    write_chroms,
    write_dosages,
    write_markers,
    write_table,
)
from .trial_tables import (
    match_phenotypes,
    read_covariates,
    read_phenotypes,
    write_covariates,
    write_phenotypes,
)

__all__ = [
    "SOURCES",
    "TARGETS",
    "convert_variants",
    "InputError",
    "InputWarning",
    "atomic_directory",
    "atomic_path",
    "IMPUTATION_FORMATS",
    "genotype_format",
    "read_genotype_file",
    "read_marker_inputs",
    "read_name_list",
    "read_table_genotypes",
    "stream_to_zarr",
    "write_genotype_file",
    "write_imputation",
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
