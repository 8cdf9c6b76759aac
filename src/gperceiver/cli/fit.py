"""``gperceiver fit``: fit a kernel baseline on every record and save it, so that
``gperceiver predict --model`` predicts new genotypes with it."""

from __future__ import annotations

from pathlib import Path

from .. import io
from ..baseline_model import (
    BASELINE_METHODS,
    fit_baseline,
    is_baseline_model,
    load_baseline,
    save_baseline,
)
from ..io import InputError
from .inputs import (
    fixed_effects_for,
    read_genotypes,
    read_marker_inputs,
    read_phenotypes_for,
    traits_of,
)
from .options import add_fixed_options, add_inputs


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
    inputs = read_marker_inputs({"marker_weights": args.marker_weights}, genotypes)
    model = fit_baseline(
        phenotypes,
        genotypes,
        args.method,
        fixed_effects_for(vars(args), phenotypes),
        marker_weights=inputs.weights,
        trait=traits_of(args)[0],
    )
    save_baseline(model, args.out)
    h2 = model.components().query("component == 'h2'")
    per_env = ", ".join(f"{r.block}: {r.value:.3f}" for r in h2.itertuples())
    print(
        f"{args.method}: fitted on {len(phenotypes.table)} records of "
        f"{genotypes.n_individuals} genotyped individuals; h2 {per_env}; "
        f"wrote {args.out}"
    )


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
    table = model.predict_table(genotypes, source=args.markers)
    io.write_table(table, args.out)
    print(
        f"{model.method}: predicted {genotypes.n_individuals} individuals x "
        f"{len(model.environments)} environments -> {args.out}"
    )


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
    p.set_defaults(func=cmd_fit)


__all__ = ["add_fit_command", "cmd_fit", "predict_with_baseline"]
