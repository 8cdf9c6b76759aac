"""The ``gperceiver`` command: parses options, reads inputs, calls one library function.

Exit codes: 0 success, 1 bad input (a one-line message names file, place and fix),
2 bad command-line usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import distributed, io
from .data import natural_key
from .io import InputError, InputWarning

EXIT_INPUT, EXIT_INTERRUPTED = 1, 130


# -- shared option groups --------------------------------------------------------------
def add_genotype_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("genotypes")
    group.add_argument(
        "--ploidy", type=int, default=2, help="copies per locus (default 2)"
    )
    group.add_argument(
        "--n-alleles",
        type=int,
        default=2,
        help="real alleles per marker in the code table (default 2 = biallelic)",
    )
    group.add_argument(
        "--dosage",
        action="store_true",
        help="MARKERS holds dosages 0..ploidy (copies of allele 2; NA = missing) "
        "instead of allele-set codes",
    )


def read_genotypes(args, stream: bool = False):
    """Genotypes of MARKERS: a table with its CHROMS, or a VCF/BCF, PLINK .bed or
    VCF Zarr store (by extension; positions come from the file, CHROMS is not used).

    ``stream``: a Zarr store is read block by block instead of loaded.
    """
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


def read_phenotypes_for(args, genotypes):
    return io.match_phenotypes(io.read_phenotypes(args.phenos), genotypes)


def read_covariates_if_given(args):
    path = getattr(args, "covariates", None)
    return io.read_covariates(path) if path else None


def add_covariate_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--covariates",
        help="environment covariates TSV: block[, time], covariates... (one row per "
        "block, or per block and day); lets models predict unseen environments",
    )


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Options that override ``--params`` only when typed (argparse.SUPPRESS)."""
    s = argparse.SUPPRESS
    group = parser.add_argument_group("training (override --params only when given)")
    group.add_argument("--params", help="JSON object of hyper-parameters (see README)")
    group.add_argument("--lr", type=float, default=s, help="peak learning rate")
    group.add_argument("--warmup-steps", type=int, default=s)
    group.add_argument(
        "--schedule", choices=["cosine", "cyclic", "constant"], default=s
    )
    group.add_argument("--batch-size", type=int, default=s)
    group.add_argument("--epochs", "--nepochs", dest="epochs", type=int, default=s)
    group.add_argument("--max-steps", type=int, default=s)
    group.add_argument(
        "--time-budget",
        dest="time_budget_s",
        type=float,
        default=s,
        help="wall-clock seconds for training: stop at the first step past it, the "
        "LR annealed on the clock (0: none; impute without --model: 1800)",
    )
    group.add_argument(
        "--patience",
        "--early-stopping-patience",
        dest="patience",
        type=int,
        default=s,
        help="evaluations without improvement before stopping",
    )
    group.add_argument("--seed", type=int, default=s)
    group.add_argument("--width", type=int, default=s, help="model width D")
    group.add_argument("--latents", dest="n_latents", type=int, default=s)
    group.add_argument("--encode-iters", type=int, default=s)
    group.add_argument(
        "--chunk-size", type=int, default=s, help="markers per attention chunk"
    )
    group.add_argument(
        "--marker-graph",
        default=s,
        metavar="ld|FILE",
        help="refine the marker embeddings over a marker graph: 'ld' (r² among the "
        "training individuals) or a TSV marker_a, marker_b, weight",
    )
    group.add_argument(
        "--graph-layers",
        type=int,
        default=s,
        help="graph-attention layers with --marker-graph (default 2)",
    )
    group.add_argument(
        "--annotations",
        default=s,
        metavar="FILE",
        help="TSV marker, <numeric or text columns> added to each marker token",
    )
    group.add_argument(
        "--no-progress", dest="progress", action="store_false", default=s
    )


def add_masked_options(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    group = parser.add_argument_group("masked-marker task")
    group.add_argument(
        "--prop-x",
        dest="input_fraction",
        type=float,
        default=s,
        help="share of loci fed to the encoder per batch (default 1)",
    )
    group.add_argument(
        "--prop-y",
        dest="target_fraction",
        type=float,
        default=s,
        help="share of input loci hidden and predicted (default 0.1)",
    )
    group.add_argument(
        "--frequency-scaler",
        type=float,
        default=s,
        help="exponent s of the (1 - p)^s target weights (default 0.5)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=s,
        help="individuals held out for early stopping (default 0.1)",
    )


def add_pretrain_task_options(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    group = parser.add_argument_group("pretraining task")
    group.add_argument(
        "--task",
        choices=["masked", "contrastive", "both"],
        default=s,
        help="masked markers, twinned shared-copy prediction for random pairs, "
        "or both losses (default masked)",
    )
    group.add_argument(
        "--masked-weight",
        type=float,
        default=s,
        help="weight of the masked loss next to the shared-copy loss in --task both "
        "(default 1)",
    )


TRAINING_KEYS = {
    "lr",
    "warmup_steps",
    "schedule",
    "batch_size",
    "epochs",
    "max_steps",
    "time_budget_s",
    "patience",
    "seed",
    "width",
    "n_latents",
    "encode_iters",
    "chunk_size",
    "marker_graph",
    "graph_layers",
    "annotations",
    "progress",
    "input_fraction",
    "target_fraction",
    "frequency_scaler",
    "val_fraction",
    "task",
    "masked_weight",
    "head",
    "objective",
    "ensemble",
    "head_epochs",
    "unfreeze",
    "marker_weights",
    "fixed",
    "fixed_numeric",
}


def typed_options(args) -> dict:
    return {k: v for k, v in vars(args).items() if k in TRAINING_KEYS}


def file_params(args) -> dict:
    from .params import read_params

    return read_params(args.params) if getattr(args, "params", None) else {}


def add_finetune_options(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    group = parser.add_argument_group("finetuning")
    group.add_argument(
        "--head",
        choices=["latent", "pool"],
        default=s,
        help="per-block latent queries or pooled latents + MLP (default pool)",
    )
    group.add_argument(
        "--objective",
        "--loss",
        dest="objective",
        default=s,
        choices=["mse", "huber", "binary", "multiclass", "ordinal", "ranking"],
        help="shared by every block (default mse)",
    )
    group.add_argument(
        "--ensemble", type=int, default=s, help="models averaged (seeds)"
    )
    group.add_argument(
        "--head-epochs",
        type=int,
        default=s,
        help="epochs training only the head on a frozen pretrained encoder",
    )
    group.add_argument(
        "--unfreeze",
        default=s,
        help="parts trained after the head phase: '', encoder, embed,encoder",
    )
    group.add_argument(
        "--marker-weights",
        default=s,
        metavar="FILE",
        help="TSV marker, weight: non-negative prior weights of markers (a QTL "
        "indicator, GWAS scores from other data) in the additive GBLUP/RKHS path; "
        "REML on the training records chooses how much they count (0: not at all)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=s,
        help="inner validation share of training individuals (without --cv)",
    )


def add_fixed_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("fixed effects")
    group.add_argument(
        "--fixed",
        default=default,
        metavar="COL[,COL...]",
        help="phenotype columns fitted as factors (sex, litter, replicate): GLS in "
        "the REML mixed model, levels learnt on the training records only",
    )
    group.add_argument(
        "--fixed-numeric",
        default=default,
        metavar="COL[,COL...]",
        help="phenotype columns fitted as linear covariates (age, start weight)",
    )


def fixed_effects_for(options: dict, phenotypes):
    """The :class:`~gperceiver.baselines.FixedEffects` of ``fixed`` /
    ``fixed_numeric`` in ``options``, checked against the phenotypes table."""
    from .baselines import FixedEffects, check_fixed_columns, column_list

    spec = FixedEffects(
        column_list(options.get("fixed")), column_list(options.get("fixed_numeric"))
    )
    check_fixed_columns(phenotypes.table, spec, phenotypes.source)
    return spec


# -- commands --------------------------------------------------------------------------
def cmd_simulate(args) -> None:
    from .simulate import SimulationConfig, simulate

    config = SimulationConfig(
        n_individuals=args.individuals,
        n_chromosomes=args.chromosomes,
        n_markers=args.markers,
        ploidy=args.ploidy,
        n_alleles=args.n_alleles,
        missing_rate=args.missing_rate,
        heritability=args.heritability,
        n_environments=args.environments,
        n_qtl=args.qtl,
        dominance_variance=args.dominance,
        epistasis_variance=args.epistasis,
        gxe_correlation=args.gxe_correlation,
        weather_days=args.weather_days,
        fixed_variance=args.fixed_variance,
        n_folds=args.folds,
        seed=args.seed,
    )
    data = simulate(config)
    out = Path(args.out)
    io.write_chroms(data.genotypes.markers, out / "chroms.tsv")
    io.write_markers(data.genotypes, out / "markers.tsv")
    io.write_phenotypes(data.phenotypes, out / "phenotypes.tsv")
    io.write_table(data.truth, out / "truth.tsv")
    is_qtl = np.zeros(data.genotypes.n_markers, dtype=np.int64)
    is_qtl[data.qtl] = 1  # usable as --marker-weights or --annotations
    io.write_table(
        pd.DataFrame({"marker": data.genotypes.markers.names, "qtl": is_qtl}),
        out / "qtl.tsv",
    )
    written = "chroms,markers,phenotypes,truth,qtl"
    if data.fixed_effects:
        effects = pd.DataFrame(
            {"effect": list(data.fixed_effects), "value": data.fixed_effects.values()}
        )
        io.write_table(effects, out / "fixed_effects.tsv", float_format="%.6f")
        written += ",fixed_effects"
    if data.covariates is not None:
        io.write_covariates(data.covariates, out / "covariates.tsv")
        written += ",covariates"
    g = data.genotypes
    print(
        f"simulated {g.n_individuals} individuals x {g.n_markers} markers "
        f"(ploidy {g.ploidy}, {g.n_alleles} alleles, "
        f"{g.missing_rate():.1%} missing copies), "
        f"{len(data.phenotypes.table)} phenotype records in {config.n_environments} "
        f"environments -> {out}/{{{written}}}.tsv"
    )


def cmd_evaluate(args) -> None:
    from .evaluate import NOTES, cross_validate, format_accuracy
    from .report import evaluation_report

    genotypes = read_genotypes(args)
    phenotypes = read_phenotypes_for(args, genotypes)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = Path(args.out)
    typed = typed_options(args) | ({"progress": False} if args.quiet else {})
    users = {"gblup-weighted", "perceiver", "perceiver-pretrained"}
    weighted = {**file_params(args), **typed}.get("marker_weights")
    if weighted and not users & set(methods):
        raise InputError(
            "--marker-weights",
            None,
            f"none of the methods {methods} uses marker weights",
            f"add one of {sorted(users)} to --methods or drop the weights",
        )
    options = {
        "params": file_params(args),
        "typed": typed,
        "workdir": out / "models",
        "covariates": read_covariates_if_given(args),
    }
    options["fixed"] = fixed_effects_for({**options["params"], **typed}, phenotypes)
    options["components"] = []
    predictions, accuracy = cross_validate(
        phenotypes,
        genotypes,
        methods,
        progress=not args.quiet,
        options=options,
        scheme=args.scheme,
    )
    importance = fold_importance(out / "models", genotypes, methods)
    io.write_table(predictions, out / "predictions.tsv")
    io.write_table(accuracy, out / "accuracy.tsv", float_format="%.4f")
    if options["components"]:
        components = pd.concat(options["components"], ignore_index=True)
        io.write_table(components, out / "variance_components.tsv")
    evaluation_report(
        out, predictions, accuracy, NOTES, first_fold_curves(out / "models"), importance
    )
    print(
        f"{args.scheme}: Pearson r within each block, pooled over its "
        f"{accuracy['fold'].nunique() - 1} split(s); mean = mean within-block r:"
    )
    print(format_accuracy(accuracy))
    for method in methods:
        if method in NOTES:
            print(f"note: {method}: {NOTES[method]}")
    print(f"wrote {out}/predictions.tsv, accuracy.tsv, report.html and plots")


def first_fold_curves(models_dir: Path) -> dict:
    """Learning curves of each neural method's first fold (one panel per model)."""
    from .report import read_learning_curves

    curves = {}
    for method_dir in sorted(p for p in models_dir.glob("*") if p.is_dir()):
        folds = sorted(method_dir.glob("fold-*"), key=lambda p: natural_key(p.name))
        for name, frame in (read_learning_curves(folds[0]) if folds else {}).items():
            curves[f"{method_dir.name} {folds[0].name} {name}"] = frame
    return curves


def fold_importance(models_dir: Path, genotypes, methods):
    """Marker importance of the neural models, averaged over folds (or None)."""
    from .finetuning import load_predictor
    from .importance import marker_importance

    neural = [m for m in methods if m.startswith("perceiver")]
    if not neural:
        return None
    folds = sorted((models_dir / neural[-1]).glob("fold-*"))
    values = [marker_importance(load_predictor(f).members, genotypes) for f in folds]
    return (np.mean(values, 0), genotypes.markers) if values else None


def cmd_gblup(args) -> None:
    from .evaluate import format_accuracy, single_split

    genotypes = read_genotypes(args)
    phenotypes = read_phenotypes_for(args, genotypes)
    if args.marker_weights and args.method != "gblup-weighted":
        raise InputError(
            "--marker-weights",
            None,
            f"--method {args.method} does not use marker weights",
            "use --method gblup-weighted or drop --marker-weights",
        )
    options = {"params": {"marker_weights": args.marker_weights}, "components": []}
    options["fixed"] = fixed_effects_for(vars(args), phenotypes)
    if args.cv is None:
        return gblup_candidates(args, phenotypes, genotypes, options)
    predictions, accuracy = single_split(
        phenotypes, genotypes, args.method, args.cv, options=options
    )
    io.write_table(predictions, args.predictions)
    if args.variance_components:
        components = pd.concat(options["components"], ignore_index=True)
        io.write_table(components, args.variance_components)
    print(format_accuracy(accuracy))


def gblup_candidates(args, phenotypes, genotypes, options) -> None:
    """``gblup`` without ``--cv``: fit on every record, predict every genotyped
    individual (selection candidates) with PEV and reliability."""
    from .baselines import Kernel, relationship_mixes
    from .selection import predict_candidates

    weighted = None
    if args.method == "gblup-weighted":
        if not args.marker_weights:
            raise InputError(
                "--method", None, "gblup-weighted needs a prior",
                "pass --marker-weights FILE (a TSV marker, weight)",
            )  # fmt: skip
        prior = io.read_marker_weights(args.marker_weights, genotypes.markers)
        mixes = relationship_mixes(genotypes, genotypes.allele_frequencies(), prior)
        weighted = [(mix, Kernel(g, genotypes.names)) for mix, g in mixes]
    candidates, components = predict_candidates(
        phenotypes, genotypes, args.method, options["fixed"], weighted=weighted
    )
    io.write_table(candidates, args.predictions)
    if args.variance_components:
        io.write_table(components, args.variance_components)
    unphenotyped = int((candidates.groupby("name")["records"].sum() == 0).sum())
    h2 = components[components["component"] == "h2"]
    per_block = ", ".join(f"block {r.block}: {r.value:.3f}" for r in h2.itertuples())
    print(
        f"{args.method}: fitted on {len(phenotypes.table)} records, predicted "
        f"{genotypes.n_individuals} individuals ({unphenotyped} without records) "
        f"in {candidates['block'].nunique()} block(s); h2 {per_block}"
    )


def cmd_pretrain(args) -> None:
    from .pretraining import pretrain_encoder

    genotypes = read_genotypes(args, stream=True)
    pretrain_encoder(
        genotypes,
        args.out,
        file_params(args),
        typed_options(args),
        resume=not args.restart,
    )
    print(f"wrote the pretrained model to {args.out}")


# one-shot `impute` (no --model) pretrains first and should end in bounded time:
# training stops after 30 minutes unless its epochs end sooner, with a short
# warm-up so that a budget of a few hundred steps is not spent ramping up. At
# 1,000 x 20,000 markers 15 minutes (~1.5 epochs) imputed worse than the
# per-marker mode (BENCHMARKS.md, Imputation).
ONE_SHOT_IMPUTE = {"time_budget_s": 1800.0, "warmup_steps": 20}


def cmd_impute(args) -> None:
    from .imputation import output_kind, write_result

    kind = output_kind(args.out, args.output_format)  # refuses before any work
    if args.reference and args.model:
        raise InputError(
            "--reference", None, "copies from a panel, --model imputes without one",
            "give one of them",
        )  # fmt: skip
    if args.model is None and args.method == "panel":
        cmd_impute_panel(args, kind)
        return
    from .pretraining import impute, load_masked_model, pretrain_encoder

    genotypes = read_genotypes(args)
    if args.output_format == "dosage" and genotypes.n_alleles != 2:
        raise InputError(
            "--output-format",
            None,
            f"dosage tables hold biallelic markers only, these have "
            f"{genotypes.n_alleles} alleles",
            "use --output-format codes or probabilities",
        )
    model_dir = args.model
    if not model_dir:  # every refusal comes before the (long) pretraining
        model_dir = Path(args.out).with_name(Path(args.out).name + ".model")
        params = {**ONE_SHOT_IMPUTE, **file_params(args)}
        if {**params, **typed_options(args)}.get("task") == "contrastive":
            raise InputError(
                "--task",
                None,
                "contrastive pretraining leaves the allele decoder untrained",
                "impute with --task masked or both",
            )
        print(
            f"no --model: pretraining on {args.markers} first (model in {model_dir})",
            file=sys.stderr,
        )
        pretrain_encoder(genotypes, model_dir, params, typed_options(args))
    model, config = load_masked_model(model_dir, genotypes, args.markers)
    if config.get("task") == "contrastive":
        raise InputError(
            model_dir,
            None,
            "was pretrained with --task contrastive, which leaves the allele "
            "decoder untrained",
            "impute with a model pretrained with --task masked or both",
        )
    result = impute(
        model,
        genotypes,
        progress=getattr(args, "progress", True),
        frequency_scaler=config["masked"]["frequency_scaler"],
    )
    write_result(result, args.out, kind, args.output_format)
    print(
        f"imputed {len(result.rows)} genotypes of "
        f"{genotypes.n_individuals} individuals "
        f"-> {args.out}"
    )


def cmd_impute_panel(args, kind: str) -> None:
    """``impute`` by panel attention: one-shot, or from ``--reference``."""
    from .imputation import impute_with_panel, panel_settings, write_result

    targets = read_genotypes(args)
    if args.output_format == "dosage" and targets.n_alleles != 2:
        raise InputError(
            "--output-format", None,
            f"dosage tables hold biallelic markers only, these have "
            f"{targets.n_alleles} alleles",
            "use --output-format codes or probabilities",
        )  # fmt: skip
    reference = None
    if args.reference:
        reference = read_reference(args)
    settings = panel_settings(vars(args))
    result = impute_with_panel(targets, reference, settings, args.reference)
    write_result(result, args.out, kind, args.output_format)
    print(
        f"imputed {len(result.rows)} genotypes of {targets.n_individuals} "
        f"individuals x {result.genotypes.n_markers} markers -> {args.out}"
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
    from .finetuning import finetune, load_predictor, prediction_table
    from .importance import marker_importance
    from .report import finetune_report, read_learning_curves

    genotypes = read_genotypes(args)
    phenotypes = read_phenotypes_for(args, genotypes)
    covariates = read_covariates_if_given(args)
    finetune(
        phenotypes,
        genotypes,
        args.out,
        file_params(args),
        typed_options(args),
        pretrained=args.pretrained,
        cv=args.cv,
        covariates=covariates,
    )
    if not distributed.is_main():
        return  # rank 0 writes the predictions and the report
    predictor = load_predictor(args.out)
    blocks = phenotypes.blocks
    if covariates is not None:  # environments without records are predicted too
        blocks = np.union1d(blocks, covariates.blocks)
    table = prediction_table(predictor, genotypes, blocks)
    merged = table.merge(phenotypes.table, on=["name", "block"], how="left")
    if args.predictions:
        io.write_table(merged, args.predictions)
    importance = (marker_importance(predictor.members, genotypes), genotypes.markers)
    finetune_report(args.out, read_learning_curves(args.out), importance, merged)
    print(f"wrote the finetuned model and report.html to {args.out}")
    if args.predictions:
        print(f"wrote predictions for every individual x block to {args.predictions}")


def cmd_predict(args) -> None:
    from .finetuning import load_predictor, prediction_table

    genotypes = read_genotypes(args, stream=True)
    covariates = read_covariates_if_given(args)
    predictor = load_predictor(args.model, genotypes, args.markers, covariates)
    table = prediction_table(predictor, genotypes)
    if not args.uncertainty and "sd" in table:
        table = table.drop(columns="sd")
    io.write_table(table, args.out)
    print(
        f"predicted {genotypes.n_individuals} individuals x "
        f"{table['block'].nunique()} blocks -> {args.out}"
    )


def cmd_convert(args) -> None:
    source, target = io.genotype_format(args.input), io.genotype_format(args.output)
    samples = read_lines(args.samples) if args.samples else None
    sites = read_lines(args.sites) if args.sites else None
    if source in io.SOURCES and target in io.TARGETS:  # streamed, REF/ALT kept
        n = io.convert_variants(args.input, args.output, samples, args.region, sites)
        print(f"converted {n} variants {args.input} -> {args.output}")
        return
    if source == "table":
        if not args.chroms:
            raise InputError(
                args.input,
                None,
                "a markers table needs its chroms table",
                "give --chroms",
            )
        genotypes = io.read_table_genotypes(
            args.input, args.chroms, args.ploidy, args.n_alleles, args.dosage
        )
    else:
        genotypes = io.read_genotype_file(args.input, samples, args.region, sites)
    chroms_out = args.out_chroms or Path(args.output).with_suffix(".chroms.tsv")
    try:
        written = io.write_genotype_file(
            genotypes, args.output, chroms_out, args.to_dosage
        )
    except ValueError as err:  # the target format cannot hold these genotypes
        raise InputError(args.input, None, str(err), None) from None
    print(
        f"converted {genotypes.n_individuals} individuals x {genotypes.n_markers} "
        f"markers (ploidy {genotypes.ploidy}, {genotypes.n_alleles} alleles) -> "
        + ", ".join(map(str, written))
    )


def read_lines(path) -> list[str]:
    """Non-empty stripped lines of a text file (sample or site names)."""
    return [
        line.strip() for line in Path(path).read_text().splitlines() if line.strip()
    ]


# -- seq: DNA sequence language models ------------------------------------------------
def cmd_seq_pretrain(args) -> None:
    from .seq.lm import pretrain

    params = file_params(args)
    if args.kind == "memory":
        from .seq.memory_lm import pretrain_memory

        params = {**params, **({"device": args.device} if args.device else {})}
        s = pretrain_memory(args.fasta, args.out, params)
        print(
            f"wrote the memory model to {args.out} ({s['training_bases']} bases, "
            f"{s['memory_ram_mb_per_mb']} MB RAM per Mb, validation "
            f"bits_per_base={s['val_bits_per_base']:.4f}, {s['seconds']} s)"
        )
        return
    summary = pretrain(args.fasta, args.out, params, resume=not args.restart)
    print(
        f"wrote the sequence model to {args.out} ({summary['steps']} steps, "
        f"validation bits_per_base={summary['best_val_bits_per_base']:.4f})"
    )


def cmd_seq_evaluate(args) -> None:
    from .seq import SeqLM
    from .seq.lm import bits_per_base, read_records
    from .seq.loading import MEMORY_KIND, load_scorer, model_kind

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if model_kind(args.model) == MEMORY_KIND:
        bits, count = load_scorer(args.model, args.device).bits_per_base([args.fasta])
    else:
        model = SeqLM.from_pretrained(args.model)
        bits, count = bits_per_base(model, read_records([args.fasta]), args.overlap)
    print(f"scored_bases={count}")
    print(f"bits_per_base={bits:.6f}")


def cmd_seq_embed(args) -> None:
    from .seq import SeqLM
    from .seq.lm import embed_records, read_records, write_embeddings

    model = SeqLM.from_pretrained(args.model)
    records = read_records([args.fasta])
    embeddings = embed_records(model, records)
    write_embeddings(args.out, [r.name for r in records], embeddings, args.model)
    print(f"wrote {len(records)} record embeddings of width {embeddings.shape[1]}")


def cmd_seq_score(args) -> None:
    from .seq.loading import load_scorer
    from .seq.variants import (
        read_variants,
        reference_digits,
        score_variants,
        write_scores,
    )

    reference = reference_digits(args.reference)
    variants = read_variants(args.vcf)
    model = load_scorer(args.model, args.device)
    table = score_variants(reference, variants, model, args.flank, args.vcf)
    write_scores(table, args.out)
    print(f"wrote {len(table)} variant scores to {args.out}")


def add_seq_commands(sub) -> None:
    """``gperceiver seq pretrain|evaluate|embed|score``."""
    seq = sub.add_parser("seq", help="DNA sequence language models (FASTA)")
    commands = seq.add_subparsers(dest="seq_command", required=True, metavar="ACTION")
    p = commands.add_parser("pretrain", help="causal LM pretraining on FASTA files")
    p.add_argument("fasta", nargs="+", help="FASTA files (plain, .gz or .xz)")
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--params", help="JSON object of model/training settings")
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in --out")
    p.add_argument(
        "--kind",
        choices=["transformer", "memory"],
        default="transformer",
        help="memory: exact k-mer memory of the files + a learned mixer (see README)",
    )
    p.add_argument("--device", help="memory kind: auto|cpu|cuda[:N] for the mixer")
    p.set_defaults(func=cmd_seq_pretrain)
    p = commands.add_parser("evaluate", help="bits per base of a FASTA file")
    p.add_argument("fasta")
    p.add_argument("--model", required=True, help="directory from seq pretrain")
    p.add_argument(
        "--overlap",
        type=int,
        help="context positions re-read by each sliding window (default context/4)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="memory models: auto|cpu|cuda[:N]")
    p.set_defaults(func=cmd_seq_evaluate)
    p = commands.add_parser("embed", help="mean hidden state of every record")
    p.add_argument("fasta")
    p.add_argument("--model", required=True, help="directory from seq pretrain")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_seq_embed)
    p = commands.add_parser("score", help="zero-shot log-likelihood ratio of variants")
    p.add_argument("reference", help="reference FASTA the VCF was called on")
    p.add_argument("vcf", help="VCF of SNVs / indels (plain or .gz)")
    p.add_argument("--model", required=True, help="directory from seq pretrain")
    p.add_argument("--out", required=True, help="output TSV")
    p.add_argument("--flank", type=int, default=128, help="bases on each side")
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda[:N]")
    p.set_defaults(func=cmd_seq_score)


# -- parser ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gperceiver",
        description="Genomic prediction with Perceiver transformers, "
        "side by side with GBLUP.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "simulate", help="simulate genotypes (msprime) and traits with known truth"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--individuals", type=int, default=500)
    p.add_argument("--markers", type=int, default=3000, help="total markers")
    p.add_argument("--chromosomes", type=int, default=3)
    p.add_argument("--ploidy", type=int, default=2)
    p.add_argument(
        "--n-alleles", type=int, default=2, help=">2 gives multi-allelic sites"
    )
    p.add_argument("--missing-rate", type=float, default=0.01)
    p.add_argument("--heritability", type=float, default=0.5)
    p.add_argument("--environments", type=int, default=4)
    p.add_argument("--qtl", type=int, default=200)
    p.add_argument(
        "--dominance", type=float, default=0.1, help="share of genetic variance"
    )
    p.add_argument(
        "--epistasis", type=float, default=0.1, help="share of genetic variance"
    )
    p.add_argument("--gxe-correlation", type=float, default=0.7)
    p.add_argument(
        "--weather-days",
        type=int,
        default=0,
        help="daily weather per environment driving GxE (writes covariates.tsv)",
    )
    p.add_argument(
        "--fixed-variance",
        type=float,
        default=0.0,
        help="share of phenotypic variance from fixed effects: a factor 'sex' and "
        "a covariate 'age' (columns of phenotypes.tsv; truth in fixed_effects.tsv)",
    )
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate)

    def inputs(p, phenos=True):
        if phenos:
            p.add_argument("phenos", help="phenotypes TSV: name, response, block[, cv]")
        p.add_argument(
            "chroms",
            nargs="?",
            help="chroms TSV: chr, marker, pos (only with a markers table)",
        )
        p.add_argument(
            "markers",
            help="markers TSV (name + one column per marker), or a .vcf[.gz], .bcf, "
            "PLINK .bed or .zarr store",
        )
        add_genotype_options(p)

    p = sub.add_parser(
        "convert",
        help="convert genotypes between VCF/BCF, PLINK, VCF Zarr and the tables",
    )
    p.add_argument(
        "input",
        help=".vcf[.gz], .bcf, .bed or prefix (PLINK 1), .pgen or prefix (PLINK 2), "
        ".zarr, or a markers TSV",
    )
    p.add_argument("output", help="the same kinds of name; the format follows it")
    p.add_argument("--chroms", help="chroms TSV of a markers-table input")
    p.add_argument(
        "--out-chroms",
        help="chroms TSV written beside a table output (default OUTPUT.chroms.tsv)",
    )
    p.add_argument(
        "--to-dosage",
        action="store_true",
        help="write a dosage table instead of allele-set codes",
    )
    p.add_argument("--samples", help="VCF input: file of sample names to keep")
    p.add_argument("--sites", help="VCF input: file of marker IDs to keep")
    p.add_argument("--region", help="VCF input: CHROM or CHROM:START-END")
    add_genotype_options(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("evaluate", help="cross-validate methods over the cv folds")
    inputs(p)
    p.add_argument(
        "--methods", default="gblup,rkhs", help="comma-separated (default gblup,rkhs)"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "gblup",
        help="fit GBLUP (or RKHS) on one train/validation split, or on every record "
        "to predict selection candidates",
    )
    inputs(p)
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
        "--method", default="gblup", choices=["gblup", "rkhs", "gblup-weighted"]
    )
    p.add_argument(
        "--marker-weights",
        metavar="FILE",
        help="TSV marker, weight: the prior of --method gblup-weighted",
    )
    add_fixed_options(p, suppress=False)
    p.set_defaults(func=cmd_gblup)

    p = sub.add_parser(
        "pretrain", help="masked-marker and/or twinned pretraining on genotypes"
    )
    inputs(p, phenos=False)
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in --out")
    add_training_options(p)
    add_masked_options(p)
    add_pretrain_task_options(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "impute", help="fill missing genotypes with a masked-marker model"
    )
    inputs(p, phenos=False)
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
        default=argparse.SUPPRESS,
        help="panel attention: typed markers per window (default 32)",
    )
    p.add_argument(
        "--shortlist",
        type=int,
        default=argparse.SUPPRESS,
        help="panel attention: candidates per window (default 1024)",
    )
    p.add_argument(
        "--fit-steps",
        type=int,
        default=argparse.SUPPRESS,
        help="panel attention: masked fitting steps (default 80, stopped after "
        "--time-budget seconds, default 120)",
    )
    p.add_argument(
        "--output-format",
        choices=["codes", "dosage", "probabilities"],
        default="codes",
        help="codes / dosage tables, or genotype probabilities "
        "of the imputed loci (long format)",
    )
    add_training_options(p)
    add_masked_options(p)
    p.set_defaults(func=cmd_impute, restart=False)

    p = sub.add_parser(
        "finetune", help="train a phenotype model (scratch or pretrained)"
    )
    inputs(p)
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
    add_training_options(p)
    add_finetune_options(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "predict", help="predict every individual x block with a finetuned model"
    )
    inputs(p, phenos=False)
    p.add_argument(
        "--model", required=True, help="directory written by gperceiver finetune"
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
    p.set_defaults(func=cmd_predict)
    add_seq_commands(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv) -> int:
    args = parser.parse_args(argv)

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            print(f"{parser.prog}: warning: {message}", file=sys.stderr)
        else:
            print(
                warnings.formatwarning(message, category, filename, lineno, line),
                file=sys.stderr,
                end="",
            )

    warnings.showwarning = show
    try:
        # under torchrun: one process group; ranks > 0 write into a private tmp dir
        with distributed.session(["out", "predictions"], args):
            args.func(args)
    except InputError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def main(argv=None) -> int:
    return run(build_parser(), argv)


def cmd_seed_pretrain(args) -> None:
    """As the original: ``--contrastive`` with an allele weight > 0 trains both."""
    if getattr(args, "task", None) == "contrastive" and (
        getattr(args, "masked_weight", 0) > 0
    ):
        args.task = "both"
    cmd_pretrain(args)


def seed_pretrain(argv=None) -> int:
    """``gperceiver_pretrain CHROMS MARKERS --model DIR`` (the original entry point)."""
    parser = argparse.ArgumentParser(
        prog="gperceiver_pretrain",
        description="Masked-marker or twinned pretraining "
        "(option names of the original tool).",
    )
    parser.add_argument("chroms")
    parser.add_argument("markers")
    parser.add_argument("--model", dest="out", required=True, help="model directory")
    parser.add_argument("--restart", action="store_true")
    add_genotype_options(parser)
    add_training_options(parser)
    add_masked_options(parser)
    add_pretrain_task_options(parser)
    parser.add_argument(
        "--contrastive",
        dest="task",
        action="store_const",
        const="contrastive",
        default=argparse.SUPPRESS,
        help="twinned task (--task contrastive; with --contrastive-allele-weight "
        "> 0, --task both)",
    )
    parser.add_argument(
        "--contrastive-allele-weight",
        dest="masked_weight",
        type=float,
        default=argparse.SUPPRESS,
        help="weight of the masked (allele) loss in the twinned task",
    )
    parser.set_defaults(func=cmd_seed_pretrain)
    return run(parser, argv)


def seed_finetune(argv=None) -> int:
    """``gperceiver_finetune PHENOS CHROMS MARKERS --model DIR`` (original)."""
    parser = argparse.ArgumentParser(
        prog="gperceiver_finetune",
        description="Finetune a phenotype model (option names of the original tool).",
    )
    parser.add_argument("phenos")
    parser.add_argument("chroms")
    parser.add_argument("markers")
    parser.add_argument("--model", dest="out", required=True, help="model directory")
    parser.add_argument("--pretrained")
    parser.add_argument("--cv")
    parser.add_argument("--predictions")
    parser.add_argument(
        "--block-strategy",
        dest="head",
        choices=["latent", "pool"],
        default=argparse.SUPPRESS,
    )
    add_genotype_options(parser)
    add_training_options(parser)
    add_finetune_options(parser)
    parser.set_defaults(func=cmd_finetune)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
