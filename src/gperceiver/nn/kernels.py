"""How the project's numba CPU kernels are compiled and launched.

Each kernel (:mod:`~gperceiver.nn.window_kernels`,
:mod:`~gperceiver.nn.embedding_kernels`, :mod:`~gperceiver.nn.dropout`) is
compiled twice by :func:`kernel`: serial, and parallel over its ``prange`` loop.
A parallel launch costs about 0.14 ms whatever the size (numba's ``workqueue``
layer, measured on the session-12 box; BENCHMARKS.md, *Scale*): a dropout of
(32, 32, 64) took 0.17 ms parallel and 0.05 ms serial. So a call runs in
parallel only with at least :data:`MIN_THREADS` torch threads and
``min_parallel`` elements of work. In a train step on two threads the parallel
kernels cut the 100k-marker step from 1.21-1.24 to 1.10-1.12 s
(``benchmarks/kernel_launch.py``). They share the cores with torch's OpenMP
workers, which spin for ``GOMP_SPINCOUNT`` iterations after each of torch's
parallel regions: ~4 ms at the default, during which a parallel kernel ran at
serial speed. ``import gperceiver`` shortens it (see ``gperceiver/__init__.py``);
since then the parallel kernels help at 10k too (0.114 vs 0.120 s, session 13).
Write a kernel's inner loop over slices handed to a plain ``njit`` function
when it is a flat elementwise loop (:mod:`~gperceiver.nn.dropout`): inline in
the ``prange`` loop it ran 1.5-2x slower a thread in the parallel variant.

Threads: numba's ``workqueue`` layer unless ``NUMBA_THREADING_LAYER`` says
otherwise. Its ``omp`` layer brings a second OpenMP runtime beside torch's,
whose idle threads spin: a one-thread step then burnt two cores of CPU time,
1.8x its wall time (BENCHMARKS.md, *Scale*, session 11). Parallel launches use
as many threads as torch (``--threads``).
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable

import numba
import torch
from numba import njit

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
_OPTIONS = {"fastmath": True, "cache": True, "nogil": True}
# a launch runs serially under this many elements of work or torch threads
# (see the module docstring)
MIN_PARALLEL = 1 << 18
MIN_THREADS = 2


class Kernel:
    """A kernel compiled serial and parallel; call it with ``work`` (a size in
    elements) first, then the kernel's own arguments. ``Kernel.every`` lists
    them all (tests run each both ways)."""

    every: list[Kernel] = []

    def __init__(self, function: Callable, min_parallel: int = MIN_PARALLEL):
        Kernel.every.append(self)
        self.serial = njit(**_OPTIONS)(_renamed(function, "serial"))
        self.parallel = njit(parallel=True, **_OPTIONS)(function)
        self.min_parallel = min_parallel
        self.__doc__ = function.__doc__

    def threads(self, work: int) -> int:
        """Threads a launch with ``work`` elements runs on (1: serially)."""
        threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        return 1 if threads < MIN_THREADS or work < self.min_parallel else threads

    def __call__(self, work: int, *args):
        threads = self.threads(work)
        if threads == 1:
            return self.serial(*args)
        numba.set_num_threads(threads)
        return self.parallel(*args)


def _renamed(function: Callable, suffix: str) -> Callable:
    """A copy of ``function`` under another name: numba names its disk cache
    after the function, and two variants under one name load each other's
    machine code (the parallel one then ran serially)."""
    copy = types.FunctionType(
        function.__code__,
        function.__globals__,
        f"{function.__name__}_{suffix}",
        function.__defaults__,
        function.__closure__,
    )
    copy.__qualname__ = f"{function.__qualname__}_{suffix}"
    copy.__module__ = function.__module__
    return copy


def kernel(function: Callable | None = None, *, min_parallel: int = MIN_PARALLEL):
    """Decorator: :class:`Kernel` of ``function`` (``@kernel`` or
    ``@kernel(min_parallel=...)``)."""
    if function is None:
        return lambda f: Kernel(f, min_parallel)
    return Kernel(function, min_parallel)
