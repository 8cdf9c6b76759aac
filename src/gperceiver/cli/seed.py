"""The original tool's entry points, ``gperceiver_pretrain`` and
``gperceiver_finetune``, with its option names."""

from __future__ import annotations

import argparse

from .models import cmd_finetune, cmd_pretrain
from .options import (
    add_device_option,
    add_finetune_options,
    add_genotype_options,
    add_masked_options,
    add_pretrain_task_options,
    add_training_options,
)
from .run import Parser, add_common_options, run


def cmd_seed_pretrain(args) -> None:
    """As the original: ``--contrastive`` with an allele weight > 0 trains both."""
    if getattr(args, "task", None) == "contrastive" and (
        getattr(args, "masked_weight", 0) > 0
    ):
        args.task = "both"
    cmd_pretrain(args)


def seed_pretrain(argv=None) -> int:
    """``gperceiver_pretrain CHROMS MARKERS --model DIR`` (the original entry point)."""
    parser = Parser(
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
    add_device_option(parser)
    add_common_options(parser)
    parser.set_defaults(func=cmd_seed_pretrain)
    return run(parser, argv)


def seed_finetune(argv=None) -> int:
    """``gperceiver_finetune PHENOS CHROMS MARKERS --model DIR`` (original)."""
    parser = Parser(
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
    add_device_option(parser)
    add_common_options(parser)
    parser.set_defaults(func=cmd_finetune)
    return run(parser, argv)
