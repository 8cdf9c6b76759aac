"""Running a parsed command: warnings and errors as one line each, exit codes
(0 success, 1 bad input or usage, 130 interrupted), threads, progress bars and the
run log.

Every user mistake ends in one line ``gperceiver: error: ...`` and exit code 1:
input errors (:class:`~gperceiver.io.InputError`), usage errors (argparse's, with
abbreviated options refused: ``--to`` is never read as ``--to-dosage``) and the
library's own ``ValueError`` checks of settings. ``GPERCEIVER_DEBUG=1`` shows the
traceback of the latter instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from .. import __version__, distributed
from ..device import resolve_device
from ..io import InputError, InputWarning, atomic_path

EXIT_INPUT, EXIT_INTERRUPTED = 1, 130
LOG_NAME = "gperceiver.log"  # written into an --out directory


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` without abbreviations whose errors are one line, exit 1."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}; see {self.prog} -h\n")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--progress`` on a command's parser."""
    group = parser.add_argument_group("running")
    group.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads for torch and for BLAS (default 1: on a shared machine a "
        "masked train step with two torch threads took 2.1-4.6x as long as with "
        "one, as "
        "each thread waits for the other whenever it is descheduled; "
        "BENCHMARKS.md, Scale)",
    )
    group.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show progress bars even when stderr is not a terminal (default: "
        "only on a terminal)",
    )


def leaf_parsers(parser: argparse.ArgumentParser):
    """Every parser that runs a command (the leaves of the sub-command tree)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            yield from leaf_parsers(child)


def set_threads(threads: int | None) -> dict:
    """Apply ``--threads`` (see :func:`add_common_options`); returns what was set."""
    import torch
    from threadpoolctl import threadpool_limits

    if threads is not None and threads < 1:
        raise InputError("--threads", None, f"{threads} is not positive", "give N >= 1")
    torch_threads = blas_threads = threads or 1
    torch.set_num_threads(torch_threads)
    threadpool_limits(blas_threads)
    return {"torch": torch_threads, "blas": blas_threads}


def default_progress(args) -> None:
    """Progress bars on a terminal only, unless typed (``--progress`` or
    ``--no-progress``) or set in the ``--params`` file."""
    if "progress" in vars(args) or not hasattr(args, "params"):
        return
    from .options import file_params

    if "progress" not in file_params(args):
        args.progress = sys.stderr.isatty()


def write_log(args, argv, started: float, threads: dict, status: str) -> None:
    """``<out>/gperceiver.log`` for a command whose ``--out`` is a directory."""
    out = getattr(args, "out", None)
    if not out or not Path(out).is_dir():
        return
    inputs = {}
    for name, value in vars(args).items():
        if isinstance(value, str) and name != "out" and Path(value).exists():
            stat = Path(value).stat()
            inputs[name] = {
                "path": str(Path(value).resolve()),
                "bytes": stat.st_size,
                "modified": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(),
            }
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record = {
        "gperceiver": __version__,
        "python": platform.python_version(),
        "command": shlex.join(["gperceiver", *argv]),
        "status": status,
        "started_utc": datetime.fromtimestamp(started, UTC).isoformat(),
        "wall_seconds": round(time.time() - started, 2),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "threads": threads,
        "options": {k: v for k, v in vars(args).items() if k != "func"},
        "inputs": inputs,
    }
    with atomic_path(Path(out) / LOG_NAME) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")


def show_warnings(prog: str) -> None:
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            print(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            print(
                warnings.formatwarning(message, category, filename, lineno, line),
                file=sys.stderr,
                end="",
            )

    warnings.showwarning = show


def run(parser: argparse.ArgumentParser, argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # usage error (one line, see Parser), --help, --version
        return stop.code if isinstance(stop.code, int) else EXIT_INPUT
    show_warnings(parser.prog)
    started, threads, status = time.time(), {}, "failed"
    try:
        threads = set_threads(getattr(args, "threads", None))
        if "device" in vars(args):  # refused (one line) before anything is written
            args.device = resolve_device(args.device)
        default_progress(args)
        # under torchrun: one process group; ranks > 0 write into a private tmp dir
        with distributed.session(["out", "predictions"], args):
            args.func(args)
        status = "finished"
    except InputError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except ValueError as err:  # a setting the library refused
        if os.environ.get("GPERCEIVER_DEBUG"):
            raise
        message = " ".join(str(err).split())
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if status == "finished":
            write_log(args, argv, started, threads, status)
    return 0
