"""``gperceiver evaluate`` (cross-validation of methods) and ``gperceiver gblup``
(one split)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import io
from ..checkpoint import record_directory
from ..evaluate import NOTES, cross_validate, format_accuracy, single_split
from ..io import InputError
from ..report import write_evaluation
from ..selection import predict_candidates
from .inputs import (
    claim_output,
    fixed_effects_for,
    read_covariates_for,
    read_genotypes,
    read_marker_inputs,
    read_phenotypes_for,
    traits_of,
)
from .options import (
    add_covariate_option,
    add_device_option,
    add_finetune_options,
    add_fixed_options,
    add_inputs,
    add_training_options,
    file_params,
    typed_options,
)


def cmd_evaluate(args) -> None:
    """Evaluate each ``--trait`` (several: one output directory each, named by
    the trait, under ``--out``)."""
    genotypes = read_genotypes(args)
    traits = traits_of(args)
    every = [read_phenotypes_for(args, genotypes, trait) for trait in traits]
    for trait, phenotypes in zip(traits, every, strict=True):
        out = Path(args.out) / trait if len(traits) > 1 else Path(args.out)
        if len(traits) > 1:
            print(f"trait {trait}:")
        evaluate_trait(args, genotypes, phenotypes, out)


def evaluate_trait(args, genotypes, phenotypes, out: Path) -> None:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    claim = claim_output(args, phenotypes, genotypes, out)
    covariates, phenotypes = read_covariates_for(args, phenotypes)
    typed = typed_options(args) | ({"progress": False} if args.quiet else {})
    options = {
        "params": file_params(args),
        "typed": typed,
        "workdir": out / "models",
        "resume": not args.restart,
        "covariates": covariates,
        "marker_inputs": read_marker_inputs({**file_params(args), **typed}, genotypes),
        "device": args.device,
    }
    options["fixed"] = fixed_effects_for({**options["params"], **typed}, phenotypes)
    options["components"], options["marker_effects"] = [], []
    predictions, accuracy = cross_validate(
        phenotypes,
        genotypes,
        methods,
        progress=not args.quiet,
        options=options,
        scheme=args.scheme,
    )
    # environments by name from here on
    predictions = phenotypes.named_environments(predictions)
    accuracy = phenotypes.named_environments(accuracy)
    components = [phenotypes.named_environments(c) for c in options["components"]]
    effects = [phenotypes.named_environments(e) for e in options["marker_effects"]]
    write_evaluation(
        out, predictions, accuracy, genotypes, methods, components, effects,
        phenotypes,
    )  # fmt: skip
    record_directory(out, claim)
    print(
        f"{args.scheme}: Pearson r within each block, pooled over its "
        f"{accuracy['fold'].nunique() - 1} split(s); mean = mean within-block r:"
    )
    print(format_accuracy(accuracy))
    for method in methods:
        if method in NOTES:
            print(f"note: {method}: {NOTES[method]}")
    print(f"wrote {out}/predictions.tsv, accuracy.tsv, report.html and plots")


def cmd_gblup(args) -> None:
    genotypes = read_genotypes(args)
    phenotypes = read_phenotypes_for(args, genotypes)
    if args.marker_weights and args.method != "gblup-weighted":
        raise InputError(
            "--marker-weights",
            None,
            f"--method {args.method} does not use marker weights",
            "use --method gblup-weighted or drop --marker-weights",
        )
    options = {
        "marker_inputs": read_marker_inputs(
            {"marker_weights": args.marker_weights}, genotypes
        ),
        "fixed": fixed_effects_for(vars(args), phenotypes),
        "components": [],
        "marker_effects": [] if args.marker_effects else None,
    }
    if args.marker_effects and args.method == "rkhs":
        raise InputError(
            "--marker-effects", None, "RKHS has no marker effects (its kernel is "
            "not linear in the dosages)", "use --method gblup or gblup-weighted",
        )  # fmt: skip
    if args.cv is None:
        return gblup_candidates(args, phenotypes, genotypes, options)
    predictions, accuracy = single_split(
        phenotypes, genotypes, args.method, args.cv, options=options
    )
    io.write_table(phenotypes.named_environments(predictions), args.predictions)
    if args.variance_components:
        components = pd.concat(options["components"], ignore_index=True)
        io.write_table(
            phenotypes.named_environments(components), args.variance_components
        )
    write_marker_effects(args, phenotypes, options["marker_effects"])
    print(format_accuracy(phenotypes.named_environments(accuracy)))


def write_marker_effects(args, phenotypes, effects) -> None:
    """``--marker-effects FILE``: the rrBLUP allele effects of each block's fit."""
    if args.marker_effects:
        table = phenotypes.named_environments(pd.concat(effects, ignore_index=True))
        io.write_table(table, args.marker_effects, float_format="%.6g")


def gblup_candidates(args, phenotypes, genotypes, options) -> None:
    """``gblup`` without ``--cv``: fit on every record, predict every genotyped
    individual (selection candidates) with PEV and reliability."""
    candidates, components = predict_candidates(
        phenotypes,
        genotypes,
        args.method,
        options["fixed"],
        effects=options["marker_effects"],
        prior=options["marker_inputs"].weights,
    )
    write_marker_effects(args, phenotypes, options["marker_effects"])
    candidates = phenotypes.named_environments(candidates)
    components = phenotypes.named_environments(components)
    io.write_table(candidates, args.predictions)
    if args.variance_components:
        io.write_table(components, args.variance_components)
    unphenotyped = int((candidates.groupby("name")["records"].sum() == 0).sum())
    h2 = components[components["component"] == "h2"]
    per_environment = ", ".join(
        f"block {r.block}: {r.value:.3f}" for r in h2.itertuples()
    )
    print(
        f"{args.method}: fitted on {len(phenotypes.table)} records, predicted "
        f"{genotypes.n_individuals} individuals ({unphenotyped} without records) "
        f"in {candidates['block'].nunique()} block(s); h2 {per_environment}"
    )


def add_evaluate_commands(sub) -> None:
    """``evaluate`` and ``gblup``."""
    p = sub.add_parser("evaluate", help="cross-validate methods over the cv folds")
    add_inputs(p)
    p.add_argument(
        "--methods", default="gblup,rkhs", help="comma-separated (default gblup,rkhs)"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--restart",
        action="store_true",
        help="replace the run in --out (default: resume it if it is the same run, "
        "refuse another)",
    )
    p.add_argument(
        "--scheme",
        choices=["cv1", "cv0", "cv00"],
        default="cv1",
        help="cv1: new individuals (cv column); cv0: leave one environment (block) "
        "out; cv00: new individuals in a left-out environment (default cv1)",
    )
    add_covariate_option(p)
    add_fixed_options(p, suppress=True)
    add_training_options(p)
    add_finetune_options(p)
    add_device_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "gblup",
        help="fit GBLUP (or RKHS) on one train/validation split, or on every record "
        "to predict selection candidates",
    )
    add_inputs(p)
    p.add_argument(
        "--cv",
        help="rows with this cv value are validation; without it: fit on every "
        "record and predict every genotyped individual (selection candidates: "
        "GEBV, PEV, reliability)",
    )
    p.add_argument("--predictions", required=True, help="output TSV")
    p.add_argument(
        "--variance-components",
        metavar="FILE",
        help="also write s2g, s2e, h2 and the fixed effects of each block's fit",
    )
    p.add_argument(
        "--marker-effects",
        metavar="FILE",
        help="also write the rrBLUP allele effects of each block's GBLUP fit "
        "(gebv = sum of effect x (dosage - ploidy x frequency))",
    )
    p.add_argument(
        "--method", default="gblup", choices=["gblup", "rkhs", "gblup-weighted"]
    )
    p.add_argument(
        "--marker-weights",
        metavar="FILE",
        help="TSV marker, weight: the prior of --method gblup-weighted",
    )
    add_fixed_options(p, suppress=False)
    p.set_defaults(func=cmd_gblup)
