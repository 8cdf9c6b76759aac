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


THP_SCRIPT = """
import sys
from gperceiver.allocator import huge_pages_for_torch
print(huge_pages_for_torch(), end=" ")  # before torch is imported
import torch
x = torch.ones(32 * 2**20)  # 128 MiB, far above torch's 2 MB threshold
huge = sum(int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
           if line.startswith("AnonHugePages"))
print(huge_pages_for_torch(), huge // 1024)  # too late now: False; MiB in 2 MB pages
"""


def huge_mib(env_value: str | None) -> tuple[str, str, int]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", THP_SCRIPT],
        capture_output=True, text=True, check=True, env=env,
    ).stdout.split()  # fmt: skip
    return out[0], out[1], int(out[2])


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as handle:
            text = handle.read()
    except OSError:
        return "absent"
    return text[text.index("[") + 1 : text.index("]")]


@pytest.mark.skipif(
    _thp_mode() not in ("madvise", "always"), reason="kernel without THP for madvise"
)
def test_huge_pages_for_torch__puts_large_tensors_on_2_mb_pages():
    early, late, huge = huge_mib(None)
    assert (early, late) == ("True", "False")  # after torch is imported: too late
    assert huge >= 64  # most of the 128 MiB tensor sits on 2 MB pages
    if _thp_mode() == "madvise":  # without torch's madvise the kernel gives none
        early, _, huge = huge_mib("0")
        assert early == "False" and huge < 8  # a user's explicit 0 is kept
