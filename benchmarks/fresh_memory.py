"""What touching freshly mapped memory costs on this machine: a 1 GB float tensor
(8 x 500,000 x 64, one masked step's token tensor at 500k markers) allocated and
filled four times, then one filled again in place; user and system CPU time of
each (``getrusage``). Run with ``THP_MEM_ALLOC_ENABLE=1`` for 2 MB pages::

    python benchmarks/fresh_memory.py
"""

from __future__ import annotations

import resource
import time

import torch


def cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def timed(label: str, fill) -> None:
    (user, system), started = cpu(), time.perf_counter()
    fill()
    user_end, system_end = cpu()
    print(
        f"{label}: wall {time.perf_counter() - started:.3f} s, "
        f"user {user_end - user:.3f} s, system {system_end - system:.3f} s"
    )


def main() -> None:
    torch.set_num_threads(1)
    for _ in range(4):
        timed("fresh 1 GB, filled", lambda: torch.empty(8, 500_000, 64).fill_(1.0))
    kept = torch.empty(8, 500_000, 64).fill_(1.0)
    timed("the same 1 GB filled again", lambda: kept.fill_(2.0))


if __name__ == "__main__":
    main()
