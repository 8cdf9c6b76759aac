"""The decoder window's forward and backward time against its target chunk size.

Random token-space queries, offsets and normed tokens as the masked step has them
(batch 8, 10% of the markers as sorted targets, window 16, 4 heads, width 64),
one torch thread, freed memory kept as the command line keeps it; prints the
best process CPU time of 3 repeats (after one warm-up) per chunk size, each size
twice in turn::

    python benchmarks/window_chunks.py --markers 100000 --chunks 2048,256,64,16
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markers", type=int, default=100_000)
    parser.add_argument("--chunks", default="2048,256,64,16")
    args = parser.parse_args()
    from gperceiver.allocator import keep_freed_memory
    from gperceiver.nn.window_attention import _WindowAttention

    torch.set_num_threads(1)
    keep_freed_memory(args.markers)
    torch.manual_seed(0)
    b, s, h, d, window = 8, args.markers, 4, 64, 16
    t = s // 10
    normed = torch.randn(b * s, d, requires_grad=True)
    q = torch.randn(b, t, h, d, requires_grad=True)
    bias = torch.randn(b, t, h, 2 * window, requires_grad=True)
    centers = torch.sort(torch.randint(0, s, (b, t)), 1).values
    offsets = torch.cat([torch.arange(-window, 0), torch.arange(1, window + 1)])
    positions = centers[..., None] + offsets
    inside = (positions >= 0) & (positions < s)
    positions = positions.clamp(0, s - 1)
    index = (torch.arange(b)[:, None, None] * s + positions).flatten()
    grad = torch.randn(b, t, h, d)
    for chunk in [int(c) for c in args.chunks.split(",")] * 2:
        times = []
        for _ in range(4):
            normed.grad = q.grad = bias.grad = None
            started = time.process_time()
            out = _WindowAttention.apply(q, bias, inside, normed, index, chunk)
            middle = time.process_time()
            out.backward(grad)
            times.append((middle - started, time.process_time() - middle))
        forward = min(f for f, _ in times[1:])
        backward = min(b_ for _, b_ in times[1:])
        print(
            f"chunk {chunk}: forward {forward * 1e3:.0f} ms,"
            f" backward {backward * 1e3:.0f} ms"
        )


if __name__ == "__main__":
    main()
