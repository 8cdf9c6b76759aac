"""``gperceiver fit``: fit a kernel baseline on every record and save it, so that
``gperceiver predict --model`` predicts new genotypes with it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import io
from ..baseline_model import BASELINE_METHODS, fit_baseline
from ..baseline_storage import is_baseline_model, load_baseline, save_baseline
from ..io import InputError
from .inputs import (
    fixed_effects_for,
    read_covariates_for,
    read_genotypes,
    read_marker_inputs,
    read_phenotypes_for,
    read_records_for,
    traits_of,
)
from .options import add_covariate_option, add_fixed_options, add_inputs


def _check_out(out) -> None:
    """Refuse, before any work, an ``--out`` that is a file or holds a model of
    another kind (a baseline model there is replaced)."""
    out = Path(out)
    if out.is_file() or ((out / "config.json").exists() and not is_baseline_model(out)):
        raise InputError(
            "--out", None, f"{out} is a file or holds another kind of model",
            "give a new directory (or one written by gperceiver fit)",
        )  # fmt: skip


def cmd_fit(args) -> None:
    _check_out(args.out)
    genotypes = read_genotypes(args)
    phenotypes = read_phenotypes_for(args, genotypes)
    weighted = args.method == "gblup-weighted"
    if bool(args.marker_weights) != weighted:
        raise InputError(
            "--marker-weights", None,
            "is the prior of --method gblup-weighted and of no other method",
            "give both --method gblup-weighted and --marker-weights FILE, or neither",
        )  # fmt: skip
    if args.covariates and args.method != "gblup-rn":
        raise InputError(
            "--covariates", None, f"--method {args.method} does not use them",
            "use --method gblup-rn or drop --covariates",
        )  # fmt: skip
    covariates, phenotypes = read_covariates_for(args, phenotypes)
    inputs = read_marker_inputs({"marker_weights": args.marker_weights}, genotypes)
    model = fit_baseline(
        phenotypes,
        genotypes,
        args.method,
        fixed_effects_for(vars(args), phenotypes),
        marker_weights=inputs.weights,
        trait=traits_of(args)[0],
        covariates=covariates,
    )
    save_baseline(model, args.out)
    print(
        f"{args.method}: fitted on {len(phenotypes.table)} records of "
        f"{genotypes.n_individuals} genotyped individuals; {_estimates(model)}; "
        f"wrote {args.out}"
    )


def _estimates(model) -> str:
    """h2 per environment, or the reaction norm's variance components."""
    frame = model.components()
    if model.method == "gblup-rn":
        first = frame[frame["block"] == frame["block"].iloc[0]]
        parts = first.query("component in ('s2g', 's2ge', 's2e')")
        return ", ".join(f"{r.component} {r.value:.4g}" for r in parts.itertuples())
    h2 = frame.query("component == 'h2'")
    return "h2 " + ", ".join(f"{r.block}: {r.value:.3f}" for r in h2.itertuples())


def predict_with_baseline(args) -> None:
    """``predict --model`` of a :func:`cmd_fit` model: ``name, block,
    prediction, gebv`` for every individual x environment."""
    for option in ("uncertainty", "covariates"):
        if getattr(args, option, None):
            raise InputError(
                f"--{option}", None, f"{args.model} holds a baseline model",
                f"drop --{option} (it applies to finetuned models)",
            )  # fmt: skip
    model = load_baseline(args.model)
    genotypes = read_genotypes(args)
    if getattr(args, "records", None):
        labels = {env.block: env.label for env in model.environments}
        environments = {str(label): block for block, label in labels.items()}
        spec = model.environments[0].design.spec
        records = read_records_for(args, genotypes, environments, spec)
        fixed, genetic = model.predict_records(genotypes, records, args.markers)
        return write_record_predictions(args, records, fixed, genetic, labels)
    table = model.predict_table(genotypes, source=args.markers)
    io.write_table(table, args.out)
    print(
        f"{model.method}: predicted {genotypes.n_individuals} individuals x "
        f"{len(model.environments)} environments -> {args.out}"
    )
    if model.environments[0].design.spec:
        print(FIXED_AT_MEAN)


FIXED_AT_MEAN = (
    "prediction = gebv + the fixed part at the mean of the training levels and "
    "covariates; pass --records SHEET for each record's own"
)


def write_record_predictions(args, records, fixed, genetic, labels) -> None:
    """``name, block, prediction, gebv, fixed`` of each record (``labels``: block
    code -> the name outputs show) to ``--out``."""
    table = pd.DataFrame(
        {
            "name": records["name"],
            "block": [labels[b] for b in records["block"]],
            "prediction": fixed + genetic,
            "gebv": genetic,
            "fixed": fixed,
        }
    )
    io.write_table(table, args.out)
    print(f"predicted {len(table)} records of {args.records} -> {args.out}")


def add_fit_command(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="fit GBLUP / RKHS on every record and save it for predict --model",
    )
    add_inputs(p)
    p.add_argument("--method", default="gblup", choices=list(BASELINE_METHODS))
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument(
        "--marker-weights",
        metavar="FILE",
        help="TSV marker, weight: the prior of --method gblup-weighted",
    )
    add_fixed_options(p, suppress=False)
    add_covariate_option(p)
    p.set_defaults(func=cmd_fit)


__all__ = [
    "FIXED_AT_MEAN",
    "add_fit_command",
    "cmd_fit",
    "predict_with_baseline",
    "write_record_predictions",
]
