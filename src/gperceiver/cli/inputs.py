"""The edge of the library: every input file a command names is read here,
through :mod:`gperceiver.io`, and handed on as data objects."""

from __future__ import annotations

import dataclasses
import warnings

from .. import io
from ..allocator import keep_freed_memory
from ..baselines import FixedEffects, check_fixed_columns, column_list
from ..data import MarkerInputs
from ..io import InputError, InputWarning
from ..io.records import read_records


def read_genotypes(args, stream: bool = False):
    """Genotypes of MARKERS: a table with its CHROMS, or a VCF/BCF, PLINK .bed or
    VCF Zarr store (by extension; positions come from the file, CHROMS is not used).

    ``stream``: a Zarr store is read block by block instead of loaded. Once read,
    freed memory is kept for reuse up to :data:`gperceiver.allocator.MARKER_LIMIT`
    markers (:func:`gperceiver.allocator.keep_freed_memory`).
    """
    genotypes = _read_genotypes(args, stream)
    keep_freed_memory(genotypes.n_markers)
    return genotypes


def _read_genotypes(args, stream: bool):
    if io.genotype_format(args.markers) != "table":
        if args.chroms:
            warnings.warn(
                f"{args.chroms}: ignored, {args.markers} carries its own positions",
                InputWarning,
                stacklevel=2,
            )
        return io.read_genotype_file(args.markers, stream=stream)
    if not args.chroms:
        raise InputError(
            args.markers,
            None,
            "a markers table needs its chroms table",
            "give CHROMS before MARKERS",
        )
    return io.read_table_genotypes(
        args.markers, args.chroms, args.ploidy, args.n_alleles, args.dosage
    )


def traits_of(args) -> list[str]:
    """The response columns of ``--trait`` (default ``response``)."""
    return list(column_list(getattr(args, "trait", None))) or ["response"]


def read_phenotypes_for(args, genotypes, trait: str | None = None):
    """The phenotypes of ``trait`` (default: the one ``--trait``), with the
    ``--environment`` and ``--name`` columns, matched to the genotypes."""
    if trait is None:
        traits = traits_of(args)
        if len(traits) > 1:
            raise InputError(
                "--trait",
                None,
                f"{args.command} takes one trait, got {traits}",
                "run it once per trait, or use evaluate (it runs each)",
            )
        trait = traits[0]
    phenotypes = io.read_phenotypes(
        args.phenos,
        trait=trait,
        environment=getattr(args, "environment", None) or "block",
        name=getattr(args, "name_column", None) or "name",
    )
    return io.match_phenotypes(phenotypes, genotypes)


def read_covariates_if_given(args):
    path = getattr(args, "covariates", None)
    return io.read_covariates(path) if path else None


def read_covariates_for(args, phenotypes):
    """``(covariates or None, phenotypes)``: the ``--covariates`` matched to the
    phenotypes' environments by name (:func:`gperceiver.io.align_environments`);
    the phenotypes' labels then name the covariates' new environments too."""
    covariates = read_covariates_if_given(args)
    if covariates is None:
        return None, phenotypes
    covariates, labels = io.align_environments(
        covariates, phenotypes.environment_labels, phenotypes.source
    )
    if labels is not None:
        phenotypes = dataclasses.replace(phenotypes, environment_labels=labels)
    return covariates, phenotypes


def read_marker_inputs(options: dict, genotypes) -> MarkerInputs:
    """The marker files named by ``options`` (``--params`` merged with typed
    options): marker weights, an edge-list marker graph, annotations."""
    return io.read_marker_inputs(options, genotypes.markers)


def fixed_effects_for(options: dict, phenotypes) -> FixedEffects:
    """The :class:`~gperceiver.baselines.FixedEffects` of ``fixed`` /
    ``fixed_numeric`` in ``options``, checked against the phenotypes table."""
    spec = FixedEffects(
        column_list(options.get("fixed")), column_list(options.get("fixed_numeric"))
    )
    check_fixed_columns(phenotypes.table, spec, phenotypes.source)
    return spec


# options that change how a run is shown or where it runs, not what it computes
PRESENTATION = {"func", "out", "progress", "quiet", "threads", "restart", "predictions"}
PRESENTATION |= {"device"}


def claim_output(args, phenotypes, genotypes, out=None) -> dict:
    """Refuse an ``--out`` (or ``out``, one trait's directory) that holds another
    finished run (unless ``--restart``), before any work; returns the identity to
    record when this run ends."""
    from ..checkpoint import claim_directory
    from .options import file_params

    options = {k: v for k, v in vars(args).items() if k not in PRESENTATION}
    identity = {
        "options": options,
        "params": file_params(args),
        "phenotypes": phenotypes.table.to_numpy(dtype=str),
        "genotypes": genotypes.fingerprint(),
    }
    directory = args.out if out is None else out
    return claim_directory(directory, identity, getattr(args, "restart", False))


def read_records_for(args, genotypes, environments: dict, spec):
    """The ``--records`` sheet, environments matched by name to the model's
    (``environments``: name -> block code), read from the ``--environment`` /
    ``--name`` columns."""
    records = read_records(
        args.records,
        genotypes,
        environments,
        spec.columns,
        environment=args.environment or "block",
        name=args.name_column or "name",
    )
    check_fixed_columns(records, spec, args.records)
    return records
