"""gperceiver.allocator: freed large blocks are reused, not faulted in again.

Each case runs in its own interpreter (the setting is process-wide)."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc mallopt"
)

SCRIPT = """
import resource, sys
import numpy as np
from gperceiver.allocator import keep_freed_memory
core = getattr(np, "_core", None) or np.core  # numpy 2 / 1.26
core.multiarray._set_madvise_hugepage(False)  # count 4 KiB pages, as torch's
applied = keep_freed_memory(int(sys.argv[1]))
faults = []
for _ in range(5):  # a step's large arrays, allocated and freed again and again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = np.ones(50_000_000, np.float32)  # 200 MB, above glibc's largest mmap threshold
    y = np.ones(25_000_000, np.float32) + x[:25_000_000]
    del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[1:]))  # after one warm-up round
"""

# Each round touches 97,656 pages of 4 KiB (200 + 100 + 100 MB). torch's
# 64-byte-aligned blocks fit the heap's holes less neatly than malloc's, so its
# reuse is measured per train step instead (BENCHMARKS.md, Scale).
PAGES_PER_ROUND = 97_656


def page_faults(n_markers: int) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n_markers)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out[0] == "True", int(out[1])


def test_keep_freed_memory__a_repeated_allocation_faults_no_page_in_again():
    applied, faults = page_faults(100_000)
    assert applied
    assert faults < 0.01 * 4 * PAGES_PER_ROUND  # the freed blocks are reused


def test_keep_freed_memory__leaves_the_allocator_alone_above_the_marker_limit():
    applied, faults = page_faults(500_000)
    assert not applied
    assert faults > 0.5 * 4 * PAGES_PER_ROUND  # glibc maps and unmaps the blocks
