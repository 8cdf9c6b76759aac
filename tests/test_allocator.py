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
import torch
from gperceiver.allocator import keep_freed_memory
torch.set_num_threads(1)
applied = keep_freed_memory(int(sys.argv[1]))
faults = []
for _ in range(6):  # a step's large tensors, allocated and freed again and again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(50_000_000)  # 200 MB, above glibc's largest mmap threshold
    y = torch.ones(25_000_000) + x[:25_000_000]
    del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[2:]))  # after two warm-up rounds
"""


def page_faults(n_markers: int) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n_markers)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out[0] == "True", int(out[1])


def test_keep_freed_memory__a_repeated_allocation_faults_no_page_in_again():
    applied, faults = page_faults(100_000)
    assert applied
    # 4 rounds of 3 tensors, 97,656 pages of 4 KiB a round: each faulted in afresh
    # without the setting; with it the heap's blocks are reused (now and then a
    # round whose blocks land elsewhere faults one 100 MB tensor, 24,414 pages)
    assert faults < 4 * 97_656 / 2


def test_keep_freed_memory__leaves_the_allocator_alone_above_the_marker_limit():
    applied, faults = page_faults(500_000)
    assert not applied
    assert faults > 0.9 * 4 * 97_656  # glibc maps and unmaps each block each time
