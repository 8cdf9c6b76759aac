"""The ``gperceiver`` command: parses options, reads inputs, calls one library function.

One module per command group (:mod:`.simulate`, :mod:`.convert`,
:mod:`.evaluate`, :mod:`.models`, :mod:`.seq`, and :mod:`.seed` for the original
tool's entry points); :mod:`.options` holds the shared option groups,
:mod:`.inputs` reads the files a command names, :mod:`.run` runs it.

Exit codes: 0 success, 1 bad input or usage (a one-line message names the file or
option, the place and the fix), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from .convert import add_convert_command
from .evaluate import add_evaluate_commands
from .fit import add_fit_command
from .models import add_model_commands
from .run import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    Parser,
    add_common_options,
    leaf_parsers,
    run,
)
from .seed import seed_finetune, seed_pretrain
from .seq import add_seq_commands
from .simulate import add_simulate_command


def build_parser() -> argparse.ArgumentParser:
    """The ``gperceiver`` parser: one sub-command per command."""
    parser = Parser(
        prog="gperceiver",
        description="Genomic prediction with Perceiver transformers, "
        "side by side with GBLUP.",
    )
    parser.add_argument(
        "--version", action="version", version=f"gperceiver {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_simulate_command(sub)
    add_convert_command(sub)
    add_evaluate_commands(sub)
    add_model_commands(sub)
    add_fit_command(sub)
    add_seq_commands(sub)
    for command in leaf_parsers(parser):
        add_common_options(command)
    return parser


def main(argv=None) -> int:
    return run(build_parser(), argv)


__all__ = [
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "build_parser",
    "main",
    "run",
    "seed_finetune",
    "seed_pretrain",
]

if __name__ == "__main__":
    sys.exit(main())
