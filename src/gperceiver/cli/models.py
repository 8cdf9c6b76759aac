"""The model commands: ``pretrain``, ``impute``, ``finetune`` and ``predict``."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import distributed, io
from ..baseline_storage import is_baseline_model
from ..baselines import NO_FIXED
from ..checkpoint import record_directory
from ..data import Phenotypes
from ..finetuning import (
    finetune,
    load_predictor,
    model_environments,
    prediction_table,
    record_predictions,
)
from ..io import InputError
from ..pretraining import impute_genotypes, one_shot_params, pretrain_encoder
from ..report import write_finetune_outputs
from .fit import FIXED_AT_MEAN, predict_with_baseline, write_record_predictions
from .inputs import (
    claim_output,
    read_covariates_for,
    read_covariates_if_given,
    read_genotypes,
    read_marker_inputs,
    read_phenotypes_for,
    read_records_for,
)
from .options import (
    add_covariate_option,
    add_device_option,
    add_finetune_options,
    add_fixed_options,
    add_inputs,
    add_masked_options,
    add_pretrain_task_options,
    add_training_options,
    file_params,
    typed_options,
)


def cmd_pretrain(args) -> None:
    genotypes = read_genotypes(args, stream=True)
    params, typed = file_params(args), typed_options(args)
    pretrain_encoder(
        genotypes,
        args.out,
        params,
        typed,
        resume=not args.restart,
        marker_inputs=read_marker_inputs({**params, **typed}, genotypes),
        device=args.device,
    )
    print(f"wrote the pretrained model to {args.out}")


def cmd_impute(args) -> None:
    from ..imputation import check_output_format, output_kind, write_result

    kind = output_kind(args.out, args.output_format)  # refuses before any work
    if args.reference and args.model:
        raise InputError(
            "--reference", None, "copies from a panel, --model imputes without one",
            "give one of them",
        )  # fmt: skip
    if args.model is None and args.method == "panel":
        streamed = io.genotype_format(args.markers) == "zarr" and kind == "vcf"
        if streamed and not args.reference:
            impute_store_panel(args)  # memory bounded by a stretch of markers
        else:
            cmd_impute_panel(args, kind)
        return
    genotypes = read_genotypes(args)
    check_output_format(genotypes, args.output_format)
    model_dir, params, inputs = args.model, None, None
    if not model_dir:  # every refusal comes before the (long) pretraining
        model_dir = Path(args.out).with_name(Path(args.out).name + ".model")
        params = one_shot_params(file_params(args), typed_options(args))
        inputs = read_marker_inputs({**params, **typed_options(args)}, genotypes)
        print(
            f"no --model: pretraining on {args.markers} first (model in {model_dir})",
            file=sys.stderr,
        )
    result = impute_genotypes(
        genotypes,
        model_dir,
        params,
        typed_options(args),
        progress=getattr(args, "progress", True),
        data_path=args.markers,
        marker_inputs=inputs,
        device=args.device,
    )
    write_result(result, args.out, kind, args.output_format)
    print(
        f"imputed {len(result.rows)} genotypes of "
        f"{genotypes.n_individuals} individuals "
        f"-> {args.out}"
    )


def cmd_impute_panel(args, kind: str) -> None:
    """``impute`` by panel attention: one-shot, or from ``--reference``."""
    from ..imputation import (
        check_output_format,
        impute_with_panel,
        panel_settings,
        write_result,
    )

    targets = read_genotypes(args)
    check_output_format(targets, args.output_format)
    reference = read_reference(args) if args.reference else None
    settings = panel_settings(vars(args))
    result = impute_with_panel(targets, reference, settings, args.reference)
    write_result(result, args.out, kind, args.output_format)
    print(
        f"imputed {len(result.rows)} genotypes of {targets.n_individuals} "
        f"individuals x {result.genotypes.n_markers} markers -> {args.out}"
    )


def impute_store_panel(args) -> None:
    """One-shot ``impute`` of a VCF Zarr store into a VCF/BCF, streamed by
    stretches of markers (:mod:`gperceiver.streamed_imputation`)."""
    from ..imputation import panel_settings
    from ..streamed_imputation import impute_store

    store = read_genotypes(args, stream=True)
    summary = impute_store(store, args.out, panel_settings(vars(args)))
    print(
        f"imputed {summary['imputed']} genotypes of {store.n_individuals} "
        f"individuals x {store.n_markers} markers (streamed) -> {args.out}"
    )


def read_reference(args):
    """The ``--reference`` panel: a genotype file, or a table with its chroms."""
    if io.genotype_format(args.reference) != "table":
        return io.read_genotype_file(args.reference)
    if not args.reference_chroms:
        raise InputError(
            args.reference, None, "a markers table needs its chroms table",
            "give --reference-chroms",
        )  # fmt: skip
    return io.read_table_genotypes(
        args.reference, args.reference_chroms, args.ploidy, args.n_alleles
    )


def cmd_finetune(args) -> None:
    genotypes = read_genotypes(args)
    phenotypes = read_phenotypes_for(args, genotypes)
    covariates, phenotypes = read_covariates_for(args, phenotypes)
    params, typed = file_params(args), typed_options(args)
    restart = getattr(args, "restart", False)
    claim = claim_output(args, phenotypes, genotypes)
    finetune(
        phenotypes,
        genotypes,
        args.out,
        params,
        typed,
        pretrained=args.pretrained,
        cv=args.cv,
        covariates=covariates,
        marker_inputs=read_marker_inputs({**params, **typed}, genotypes),
        resume=not restart,
        device=args.device,
    )
    if not distributed.is_main():
        return  # rank 0 writes the predictions and the report
    write_finetune_outputs(
        args.out, phenotypes, genotypes, covariates, args.predictions, args.device
    )
    record_directory(args.out, claim)
    print(f"wrote the finetuned model and report.html to {args.out}")
    if args.predictions:
        print(f"wrote predictions for every individual x block to {args.predictions}")


def cmd_predict(args) -> None:
    if is_baseline_model(args.model):  # written by gperceiver fit
        return predict_with_baseline(args)
    genotypes = read_genotypes(args, stream=not args.records)
    covariates = read_covariates_if_given(args)
    labels = model_environments(args.model)
    if covariates is not None:  # matched to the model's environments by name
        covariates, labels = io.align_environments(
            covariates, labels, f"the model {args.model}"
        )
    predictor = load_predictor(
        args.model, genotypes, args.markers, covariates, args.device
    )
    if args.records:
        return _predict_records(args, predictor, genotypes, labels)
    table = prediction_table(predictor, genotypes)
    if labels is not None:
        table = Phenotypes(table, environment_labels=labels).named_environments(table)
    if not args.uncertainty and "sd" in table:
        table = table.drop(columns="sd")
    io.write_table(table, args.out)
    print(
        f"predicted {genotypes.n_individuals} individuals x "
        f"{table['block'].nunique()} blocks -> {args.out}"
    )
    if predictor.fixed is not None:
        print(FIXED_AT_MEAN)


def _predict_records(args, predictor, genotypes, labels) -> None:
    """``predict --records``: each record's genetic value in its environment
    plus the fixed part of its levels (``name, block, prediction, gebv,
    fixed``)."""
    if args.uncertainty:
        raise InputError(
            "--uncertainty", None, "is not given per record",
            "drop --uncertainty, or predict without --records",
        )  # fmt: skip
    n_blocks = predictor.members[0].head_config.n_environments
    names = labels or [str(b) for b in range(n_blocks)]
    spec = predictor.fixed.spec if predictor.fixed is not None else NO_FIXED
    environments = {str(label): code for code, label in enumerate(names)}
    records = read_records_for(args, genotypes, environments, spec)
    fixed, genetic = record_predictions(predictor, genotypes, records)
    write_record_predictions(args, records, fixed, genetic, dict(enumerate(names)))


def add_model_commands(sub) -> None:
    """``pretrain``, ``impute``, ``finetune`` and ``predict``."""
    for add in (add_pretrain, add_impute, add_finetune, add_predict):
        add(sub)


def add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="masked-marker and/or twinned pretraining on genotypes"
    )
    add_inputs(p, phenos=False)
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in --out")
    add_training_options(p)
    add_masked_options(p)
    add_pretrain_task_options(p)
    add_device_option(p)
    p.set_defaults(func=cmd_pretrain)


def add_impute(sub) -> None:
    p = sub.add_parser(
        "impute", help="fill missing genotypes by panel attention (or a masked model)"
    )
    add_inputs(p, phenos=False)
    add_impute_options(p)
    p.add_argument(
        "--output-format",
        choices=list(io.IMPUTATION_FORMATS),
        default="codes",
        help="codes / dosage tables, or genotype probabilities "
        "of the imputed loci (long format)",
    )
    add_training_options(p)
    add_masked_options(p)
    add_device_option(p)
    p.set_defaults(func=cmd_impute, restart=False)


def add_finetune(sub) -> None:
    p = sub.add_parser(
        "finetune", help="train a phenotype model (scratch or pretrained)"
    )
    add_inputs(p)
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--pretrained", help="directory written by gperceiver pretrain")
    p.add_argument(
        "--cv",
        help="rows with this cv value are the validation set "
        "(early stopping); default: an inner split of the individuals",
    )
    p.add_argument(
        "--predictions", help="also write predictions for every individual x block"
    )
    add_covariate_option(p)
    add_fixed_options(p, suppress=True)
    add_training_options(p)
    add_finetune_options(p)
    p.add_argument(
        "--restart",
        action="store_true",
        help="replace the run in --out (default: resume it if it is the same run, "
        "refuse another)",
    )
    add_device_option(p)
    p.set_defaults(func=cmd_finetune)


def add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="predict every individual x block with a finetuned model"
    )
    add_inputs(p, phenos=False)
    p.add_argument(
        "--model",
        required=True,
        help="directory written by gperceiver finetune, or by gperceiver fit "
        "(a baseline: markers matched by name; adds the column gebv)",
    )
    p.add_argument("--out", required=True, help="output TSV: name, block, prediction")
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="add the sd across ensemble members (needs --ensemble > 1)",
    )
    p.add_argument(
        "--covariates",
        help="environment covariates TSV (same columns as for finetune) of the "
        "environments to predict, new ones included; needs a model finetuned "
        "with --covariates",
    )
    add_records_options(p)
    add_device_option(p)
    p.set_defaults(func=cmd_predict)


def add_records_options(p) -> None:
    """``predict --records`` and the columns it reads."""
    group = p.add_argument_group("records")
    group.add_argument(
        "--records",
        metavar="SHEET",
        help="TSV of the records to predict: name, environment and the model's "
        "fixed-effect columns (no response); writes name, block, prediction "
        "(= gebv + fixed), gebv, fixed per record. Without it: every individual x "
        "environment, the fixed part at the mean of the training levels",
    )
    group.add_argument(
        "--environment", metavar="COL", help="the records' environment column "
        "(default block; names or codes as the model's)",
    )  # fmt: skip
    group.add_argument(
        "--name", dest="name_column", metavar="COL",
        help="the records' individual column (default name)",
    )  # fmt: skip


def add_impute_options(p) -> None:
    """``impute``'s output, model and panel-attention options."""
    p.add_argument(
        "--out",
        required=True,
        help=".vcf.gz / .bcf (GT, DS, GP, INFO/DR2) or .tsv (--output-format)",
    )
    p.add_argument(
        "--model",
        help="impute with this masked-marker model (default: panel attention)",
    )
    p.add_argument(
        "--method",
        choices=["panel", "masked"],
        default="panel",
        help="without --model: copy from a panel (default) or pretrain a "
        "masked-marker model first",
    )
    p.add_argument(
        "--reference",
        help="reference panel (VCF/BCF, PLINK, Zarr or markers table): impute the "
        "targets at every panel marker, as Beagle's ref=",
    )
    p.add_argument("--reference-chroms", help="chroms TSV of a --reference table")
    p.add_argument(
        "--window",
        type=int,
        help="panel attention: typed markers per window (default: 32, 16 or 8, "
        "whichever the fit's held-out cross-entropy prefers)",
    )
    p.add_argument(
        "--shortlist",
        type=int,
        help="panel attention: a panel of up to this many is read whole (exact); "
        "a larger one through this many candidates per stretch of 16 windows, "
        "found by hashed identity by state (default 1024)",
    )
    p.add_argument(
        "--panel-layers",
        type=int,
        help="panel attention: copy passes (default 2: the second re-estimates "
        "the similarities with the first pass's copies filled in, as an EM step; "
        "1 with --reference, where a second pass lost)",
    )
    p.add_argument(
        "--fit-steps",
        type=int,
        help="panel attention: masked fitting steps (default 80, stopped after "
        "--time-budget seconds, default 120)",
    )
