"""Keep freed memory for the next train step instead of faulting it in afresh.

glibc's ``malloc`` serves every block above 32 MiB with its own ``mmap`` and
returns it to the kernel on ``free``. A train step allocates the same large
tensors ((B, M, D) tokens and their gradients) every time, so each step faults
them in again as fresh zeroed pages: at 100,000 markers 1.3 million page faults
per masked-pretraining step, 40% of its CPU time in the kernel (BENCHMARKS.md,
*Scale*). With ``mmap`` off and the heap never trimmed, freed blocks stay in the
process and the next step reuses them: the same step ran 1.9x faster, for 18%
more peak memory (2.57 -> 3.03 GiB).

At 500,000 markers the heap's holes cost more (peak 5.9 -> 9.0 GiB, over the
8 GB a 500k step may use), so :func:`keep_freed_memory` leaves the allocator
alone above :data:`MARKER_LIMIT` markers. It changes the whole process and
cannot be undone for memory already kept; the command line applies it once the
genotypes are read (:func:`gperceiver.cli.inputs.read_genotypes`). Elsewhere than
Linux with glibc it does nothing.

Above the limit, 2 MB pages do part of what the kept heap cannot:
:func:`huge_pages_for_torch` asks torch to place its large tensors on transparent
huge pages (``THP_MEM_ALLOC_ENABLE=1``): at 500,000 markers peak RSS 5.18 GiB
instead of 5.6-5.9. Torch reads that setting once, when it is imported, before
the command line knows the number of markers, and up to the limit it costs
memory and time (100k: 3.1 -> 4.1 GiB, BENCHMARKS.md, *Scale*), so nothing sets
it by default: set it in the environment for large inputs, or call this first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# markers above which the allocator is left as it is (see the module docstring)
MARKER_LIMIT = 200_000
# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_applied = False


def keep_freed_memory(n_markers: int, limit: int = MARKER_LIMIT) -> bool:
    """Keep freed blocks for reuse (no ``mmap``, no trimming) when the data have
    at most ``limit`` markers; returns whether the setting is in force."""
    global _applied
    if _applied or n_markers > limit or not sys.platform.startswith("linux"):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    # a trim threshold of -1 is SIZE_MAX to glibc: the heap top is never returned
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    return _applied


def huge_pages_for_torch() -> bool:
    """Ask torch for 2 MB pages for its large tensors: ``THP_MEM_ALLOC_ENABLE=1``
    unless the environment already sets it. Returns whether torch will run with
    it on; False once torch is imported (too late) and elsewhere than Linux."""
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
