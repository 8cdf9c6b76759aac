"""The C kernels alone against the code they replace, at one train step's shapes.

For the default model (32 latents, width 64, diploid biallelic) and a batch
of ``--batch`` x ``--markers``, times in one process, alternating the two
variants ``--rounds`` times (the median of each):

- the token-space attention (:class:`gperceiver.nn.token_space.TokenAttention`,
  one read of the encoder, its weights kept for backward as at 10k markers):
  C (:mod:`gperceiver.nn.token_kernels`) vs torch's matrix products;
- the marker tokens (:class:`gperceiver.nn.embedding_kernels.AlleleTokens`,
  standardized, per-marker allele vectors): C vs numba;

forward alone and forward + backward, each the median of ``--repeats`` calls.
``GPERCEIVER_NATIVE`` picks the variant (read at every call)::

    python benchmarks/native_kernels.py --markers 10000 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import gperceiver  # noqa: F401  (first, as the CLI: GOMP_SPINCOUNT for torch)

# isort: split
import torch


def median_ms(call, repeats: int) -> float:
    call()  # warm up (first use compiles)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def token_attention(batch: int, markers: int):
    """Forward and forward + backward calls of one token-attention read."""
    from gperceiver.nn.token_space import TokenAttention

    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(batch, 1, 32, 64, generator=gen) * 0.3).requires_grad_()
    normed = torch.randn(batch, 1, markers, 64, generator=gen).requires_grad_()
    grad = torch.randn(batch, 1, 32, 64, generator=gen)

    def forward():
        return TokenAttention.apply(q, normed, None, 16384, True, None)

    return forward, lambda: forward().backward(grad)


def marker_tokens(batch: int, markers: int):
    """Forward and forward + backward calls of the standardized marker tokens."""
    from gperceiver.nn.embedding_kernels import AlleleTokens

    gen = torch.Generator().manual_seed(1)
    alleles = torch.randint(0, 3, (batch, markers, 2), generator=gen)
    table = torch.randn(4, 64, generator=gen).requires_grad_()
    own = torch.randn(markers, 4, 64, generator=gen).requires_grad_()
    position = torch.randn(markers, 64, generator=gen).requires_grad_()
    index, grad = torch.arange(markers), torch.randn(batch, markers, 64, generator=gen)

    def forward():
        return AlleleTokens.apply(alleles, table, own, index, position, True)

    return forward, lambda: forward().backward(grad)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markers", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = {
        "token attention (C vs torch)": token_attention(args.batch, args.markers),
        "marker tokens (C vs numba)": marker_tokens(args.batch, args.markers),
    }
    times = {(name, v): [] for name in parts for v in ("C", "other")}
    for _ in range(args.rounds):
        for variant, flag in (("C", "1"), ("other", "0")):
            os.environ["GPERCEIVER_NATIVE"] = flag
            for name, calls in parts.items():
                times[name, variant].append([median_ms(c, args.repeats) for c in calls])
    print(
        f"{args.batch} x {args.markers:,} markers, {args.threads} threads, "
        f"median of {args.rounds} rounds x {args.repeats} calls\n"
    )
    print("| part | variant | forward ms | forward + backward ms |")
    print("|---|---|---|---|")
    for (name, variant), rows in times.items():
        fwd = statistics.median(r[0] for r in rows)
        both = statistics.median(r[1] for r in rows)
        print(f"| {name} | {variant} | {fwd:.2f} | {both:.2f} |")


if __name__ == "__main__":
    main()
