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


def random_digits(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=n).astype(np.uint8)


def mutate(x: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Copy of digits ``x`` with a share ``rate`` of bases substituted."""
    rng = np.random.default_rng(seed)
    out = x.copy()
    hit = rng.random(len(x)) < rate
    out[hit] = (out[hit] + rng.integers(1, 4, hit.sum())) % 4
    return out


def letters(x: np.ndarray) -> str:
    return np.frombuffer(b"ACGT", np.uint8)[x].tobytes().decode()


def related_strains(n: int, count: int, seed: int) -> list[np.ndarray]:
    """Strains of one ancestor: 1% substitutions each, one novel block of n / 15
    bases and one inverted block of n / 30: digits, one array per strain."""
    ancestor = random_digits(n, seed)
    out = []
    for i in range(count):
        rng = np.random.default_rng(seed * 100 + i)
        s = mutate(ancestor, 0.01, seed * 100 + i)
        a = rng.integers(0, n - n // 15)
        s[a : a + n // 15] = rng.integers(0, 4, n // 15)
        b = rng.integers(0, n - n // 30)
        s[b : b + n // 30] = (3 - s[b : b + n // 30])[::-1]
        out.append(s)
    return out


class SymmetricChain:
    """Order-2 Markov chain whose law is the same on both strands.

    Weights ``W(abc) = W(revcomp(abc))`` on 3-mers define a transfer matrix on
    2-mers, ``T[ab, bc] = W(abc)``; with its Perron root ``lam`` and right / left
    eigenvectors ``v`` / ``u`` the stationary chain is
    ``p(c | ab) = W(abc) v(bc) / (lam v(ab))``, and the probability of a whole
    sequence telescopes to ``u(x0 x1) prod W v(last pair) / (Z lam^(n-2))``. The
    symmetry makes ``T`` transposed equal ``T`` with 2-mers reverse-complemented,
    so ``u = v`` reverse-complemented and ``P(revcomp x) = P(x)``.
    """

    def __init__(self, seed: int = 0, sharpness: float = 2.5):
        rng = np.random.default_rng(seed)
        g = rng.normal(size=64)
        trip = np.arange(64)
        a, b, c = trip // 16, (trip // 4) % 4, trip % 4
        rc = (3 - c) * 16 + (3 - b) * 4 + (3 - a)
        self.w = np.exp(sharpness * (g + g[rc]) / 2)  # W(abc), symmetric
        t = np.zeros((16, 16))
        t[a * 4 + b, b * 4 + c] = self.w
        values, vectors = np.linalg.eig(t)
        top = np.argmax(values.real)
        self.lam = values[top].real
        self.v = np.abs(vectors[:, top].real)
        lv, lvec = np.linalg.eig(t.T)
        self.u = np.abs(lvec[:, np.argmax(lv.real)].real)
        self.z = float(self.u @ self.v)
        self.p = (t * self.v[None, :]) / (self.lam * self.v[:, None])  # p(bc | ab)
        pair = self.u * self.v / self.z  # stationary 2-mer distribution
        self.pair, self.single = pair, pair.reshape(4, 4).sum(1)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.zeros(n, np.uint8)
        ab = rng.choice(16, p=self.pair)
        out[0], out[1] = ab // 4, ab % 4
        cdf = np.cumsum(self.p, 1)
        draws = rng.random(n)
        for i in range(2, n):
            nxt = min(int(np.searchsorted(cdf[ab], draws[i])), 15)
            out[i] = nxt % 4
            ab = nxt
        return out

    def log2_probs(self, x: np.ndarray) -> np.ndarray:
        """log2 p(x[t] | x[:t]) under the stationary chain (the exact model)."""
        x = x.astype(np.int64)
        out = np.zeros(len(x))
        out[0] = np.log2(self.single[x[0]])
        if len(x) > 1:
            out[1] = np.log2(self.pair[x[0] * 4 + x[1]] / self.single[x[0]])
        ab, bc = x[:-2] * 4 + x[1:-1], x[1:-1] * 4 + x[2:]
        out[2:] = np.log2(self.p[ab, bc])
        return out

    def window_log2(self, x: np.ndarray) -> float:
        """log2 P(x) of a whole window, by the telescoped product (closed form)."""
        x = x.astype(np.int64)
        trip = x[:-2] * 16 + x[1:-1] * 4 + x[2:]
        first, last = x[0] * 4 + x[1], x[-2] * 4 + x[-1]
        return float(
            np.log2(self.u[first]) + np.log2(self.w[trip]).sum()
            + np.log2(self.v[last]) - np.log2(self.z) - (len(x) - 2) * np.log2(self.lam)
        )  # fmt: skip
