"""Running a parsed command: warnings and input errors as one line each, exit
codes (0 success, 1 bad input, 2 bad usage, 130 interrupted)."""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import distributed
from ..io import InputError, InputWarning

EXIT_INPUT, EXIT_INTERRUPTED = 1, 130


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
