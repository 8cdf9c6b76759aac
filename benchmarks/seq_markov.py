"""Order-k Markov baselines (k = 0..14) for DNA bits per base on a held-out genome.

Counts come from both strands of the training FASTA files; the held-out file is read
forward only. Each order is interpolated with the one below it (Witten-Bell):

    p_k(x | c) = (n(c x) + u(c) p_{k-1}(x | c')) / (n(c) + u(c))

where ``c'`` drops the oldest base of ``c``, ``n`` counts occurrences, ``u(c)`` is the
number of distinct bases seen after ``c``, and ``p_0`` is add-one smoothed. A context
never seen, cut by a record start or holding a non-ACGT code backs off unchanged.
Scored positions: every A/C/G/T of the held-out file (the neural model scores the
same set). Counts use rolling base-4 integer codes, sorted once per order.

Usage: python benchmarks/seq_markov.py TRAIN.fna.xz ... --test HELDOUT.fna.xz
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gperceiver.seq.fasta import read_fasta
from gperceiver.seq.tokenizer import reverse_complement


def digits_of(paths, both_strands: bool) -> np.ndarray:
    """Bases as 0..3 (A C G T), -1 for other codes and between records: (T,) int8."""
    parts = []
    for path in paths:
        for record in read_fasta(path):
            strands = [record.tokens]
            if both_strands:
                strands.append(reverse_complement(record.tokens, record.soft_mask)[0])
            for tokens in strands:
                parts += [base_digits(tokens), np.array([-1], np.int8)]
    return np.concatenate(parts)


def base_digits(tokens: np.ndarray) -> np.ndarray:
    """Token ids -> 0..3 for A C G T, -1 for every other code: (S,) int8."""
    d = tokens.astype(np.int8) - 2
    d[(d < 0) | (d > 3)] = -1
    return d


def rolling_codes(digits: np.ndarray, max_order: int):
    """Yield (order j, code of context+base at each position, valid) for j = 0..max."""
    safe = np.where(digits < 0, 0, digits).astype(np.int64)
    code, valid = safe.copy(), digits >= 0
    yield 0, code, valid
    for j in range(1, max_order + 1):
        shifted = np.empty_like(safe)
        shifted[:j], shifted[j:] = 0, safe[:-j]
        ok = np.zeros_like(valid)
        ok[j:] = digits[:-j] >= 0
        code = code + shifted * 4**j  # base j positions back is most significant
        valid = valid & ok
        yield j, code, valid


def markov_bits(train: np.ndarray, test: np.ndarray, max_order: int) -> list[float]:
    """Held-out bits per base of orders 0..max_order (Witten-Bell interpolation)."""
    scored = test >= 0
    n_bases = np.bincount(train[train >= 0], minlength=4)
    p = ((n_bases + 1) / (n_bases.sum() + 4))[np.where(scored, test, 0)]
    bits = [float(-np.log2(p[scored]).mean())]
    train_codes, test_codes = (
        rolling_codes(train, max_order),
        rolling_codes(test, max_order),
    )
    next(train_codes), next(test_codes)  # order 0 is the add-one p above
    for (j, code, valid), (_, t_code, t_valid) in zip(
        train_codes, test_codes, strict=True
    ):
        keys, counts = np.unique(code[valid], return_counts=True)
        contexts, first = np.unique(keys >> 2, return_index=True)
        context_total = np.add.reduceat(counts, first)
        distinct = np.diff(np.append(first, len(keys)))
        use = t_valid & scored
        look = t_code[use]
        at = np.minimum(np.searchsorted(keys, look), len(keys) - 1)
        n_cx = np.where(keys[at] == look, counts[at], 0)
        c_at = np.minimum(np.searchsorted(contexts, look >> 2), len(contexts) - 1)
        seen = contexts[c_at] == look >> 2
        n_c = np.where(seen, context_total[c_at], 0)
        u_c = np.where(seen, distinct[c_at], 0)
        lower = p[use]
        p[use] = np.where(seen, (n_cx + u_c * lower) / np.maximum(n_c + u_c, 1), lower)
        bits.append(float(-np.log2(p[scored]).mean()))
        print(f"order {j:2d}: {bits[-1]:.4f} bits/base", flush=True)
    return bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train", nargs="+", help="training FASTA files")
    parser.add_argument("--test", required=True, help="held-out FASTA file")
    parser.add_argument("--max-order", type=int, default=14)
    parser.add_argument(
        "--forward-only",
        action="store_true",
        help="count the training files' forward strand only (default: both strands, "
        "as the neural model sees them through reverse-complement augmentation)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    train = digits_of(args.train, both_strands=not args.forward_only)
    test = digits_of([args.test], both_strands=False)
    strands = "forward strand" if args.forward_only else "both strands"
    print(f"training bases ({strands}): {(train >= 0).sum()}")
    print(f"held-out bases scored: {(test >= 0).sum()}")
    bits = markov_bits(train, test, args.max_order)
    print("order\tbits_per_base")
    for k, b in enumerate(bits):
        print(f"{k}\t{b:.4f}")
    best = int(np.argmin(bits))
    print(f"best order {best}: {bits[best]:.4f} bits/base")
    print(f"seconds: {time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
