"""C kernels compiled on this machine on first use, with numba as the fallback.

Some CPU kernels run faster written in C than in numba: the decoder's window
attention (``csrc/window.c``) keeps each target's (heads x width) tiles in
registers when their sizes are compile-time constants, which numba's code does
not (BENCHMARKS.md, *Scale*, session 15: a 10k-marker train step 9% faster).
:func:`library` compiles a source of ``csrc/`` with the system's C compiler
(``$CC``, else ``cc``) for this CPU (``-march=native``) and the given sizes,
once: the shared library is kept in ``$GPERCEIVER_CACHE`` (default
``~/.cache/gperceiver``), named by a hash of the source, the flags, the
compiler and the CPU, and written under a temporary name first, so processes
that compile at once never load half a file.

Without a compiler, on a failed compile, or with ``GPERCEIVER_NATIVE=0`` it
returns None and the callers run their numba kernels (the same arithmetic in
another order of additions: results agree to float32 rounding).
:func:`split` runs a kernel over ranges of its work on torch's threads (ctypes
releases the GIL during each call).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SOURCES = Path(__file__).resolve().parent / "csrc"
# float reassociation (vectorised sums) without -ffinite-math-only: the scores
# kernel writes -inf for neighbours outside the sequence
FLAGS = (
    "-O3",
    "-march=native",
    "-std=gnu11",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fPIC",
    "-shared",
)


def enabled() -> bool:
    """Whether native kernels may be used (``GPERCEIVER_NATIVE`` is not ``0``)."""
    return os.environ.get("GPERCEIVER_NATIVE", "1") != "0"


def cache_dir() -> Path:
    """Where compiled libraries are kept (``$GPERCEIVER_CACHE`` first)."""
    if "GPERCEIVER_CACHE" in os.environ:
        return Path(os.environ["GPERCEIVER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gperceiver"


@functools.cache
def _compiler(cc: str) -> tuple[str, str] | None:
    """The path of C compiler ``cc`` and its version line, or None."""
    found = shutil.which(cc)
    if found is None:
        return None
    try:
        done = subprocess.run(
            [found, "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return found, (done.stdout.splitlines() or [""])[0]


def _cpu() -> str:
    """This CPU's model and feature flags (``-march=native`` depends on them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    first = text.split("\n\n", 1)[0]
    keep = ("model name", "flags", "Features", "CPU part")
    return "\n".join(line for line in first.splitlines() if line.startswith(keep))


def library(source: str, **defines: int) -> ctypes.CDLL | None:
    """``csrc/<source>`` compiled with ``-D<NAME>=<value>`` for each define and
    loaded, or None where native kernels are off or cannot be built."""
    if not enabled():
        return None
    defined = tuple(sorted(defines.items()))
    return _library(source, os.environ.get("CC", "cc"), cache_dir(), defined)


@functools.cache
def _library(
    source: str, cc: str, cache: Path, defines: tuple[tuple[str, int], ...]
) -> ctypes.CDLL | None:
    """:func:`library` for compiler ``cc`` and cache folder ``cache``."""
    compiler = _compiler(cc)
    if compiler is None:
        return None
    text = (SOURCES / source).read_text()
    flags = [*FLAGS, *(f"-D{k}={int(v)}" for k, v in defines)]
    key = "\n".join([text, *flags, *compiler, _cpu()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    target = cache / f"{Path(source).stem}-{digest}.so"
    if not target.exists() and not _build(compiler[0], source, flags, target):
        return None
    try:
        return ctypes.CDLL(str(target))
    except OSError:
        return None


def _build(compiler: str, source: str, flags: list[str], target: Path) -> bool:
    """Compile into a temporary file beside ``target``, then rename it there."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(handle)
    except OSError:
        return False
    command = [compiler, *flags, str(SOURCES / source), "-o", partial]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            os.replace(partial, target)
            return True
        return False
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


# a kernel call with less work than this (in multiply-adds of its inner
# product, or elements) runs in one thread: a parallel launch costs more
MIN_PARALLEL_WORK = 1 << 18

_pool: ThreadPoolExecutor | None = None


def threads(work: int) -> int:
    """Threads a kernel call with ``work`` elements runs on: torch's, or one
    below :data:`MIN_PARALLEL_WORK`."""
    import torch

    return torch.get_num_threads() if work >= MIN_PARALLEL_WORK else 1


def pointer(tensor) -> int | None:
    """The address of a tensor's data for a C argument; None (NULL) for None
    or an empty tensor."""
    return None if tensor is None or tensor.numel() == 0 else tensor.data_ptr()


def split(call: Callable[[int, int], object], stop: int, parts: int) -> None:
    """``call(start, end)`` over ``parts`` contiguous ranges of ``range(stop)``:
    the first in this thread, the others on a shared pool, all awaited."""
    global _pool
    parts = max(1, min(parts, stop))
    bounds = [stop * i // parts for i in range(parts + 1)]
    if parts == 1:
        call(0, stop)
        return
    if _pool is None or _pool._max_workers < parts - 1:
        _pool = ThreadPoolExecutor(parts - 1, thread_name_prefix="gperceiver-native")
    pending = [_pool.submit(call, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    call(bounds[0], bounds[1])
    for future in pending:
        future.result()
