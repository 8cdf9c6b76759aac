"""Simulated DNA for the seq tests: an order-2 Markov chain of known entropy rate."""

import numpy as np

DOMINANT = 0.9  # probability of the preferred next base given the two before


def order2_chain(n: int, seed: int) -> str:
    """Order-2 Markov DNA: each 2-mer context prefers one base with p = DOMINANT."""
    table = np.random.default_rng(123).integers(0, 4, size=16)  # same chain per seed
    rng = np.random.default_rng(seed)
    out = list(rng.integers(0, 4, size=2))
    noise = rng.random(n)
    other = rng.integers(1, 4, size=n)
    for t in range(2, n):
        favourite = table[out[t - 2] * 4 + out[t - 1]]
        out.append(favourite if noise[t] < DOMINANT else (favourite + other[t]) % 4)
    return "".join("ACGT"[b] for b in out)


def entropy_rate() -> float:
    rest = (1 - DOMINANT) / 3
    return float(-DOMINANT * np.log2(DOMINANT) - 3 * rest * np.log2(rest))


def write_fasta(path, records: dict[str, str]) -> None:
    with open(path, "w") as handle:
        for name, seq in records.items():
            handle.write(f">{name}\n")
            handle.writelines(seq[i : i + 70] + "\n" for i in range(0, len(seq), 70))
