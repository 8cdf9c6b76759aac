"""The exact memory and its causal experts on simulated sequence of known structure."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from gperceiver.seq.experts import EXPERT_ORDERS, MEMORY_SLOTS, ExpertPass
from gperceiver.seq.memory import BREAK, Memory
from seq_helpers import mutate, random_digits

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "seq_markov.py"
spec = importlib.util.spec_from_file_location("seq_markov", SCRIPT)
seq_markov = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seq_markov)


def both_strands(*parts) -> np.ndarray:
    out = []
    for p in parts:
        out += [p, [BREAK]]
    for p in parts:
        out += [(3 - p)[::-1], [BREAK]]
    return np.concatenate(out).astype(np.uint8)


def run(memory, x, chunks=1):
    experts = ExpertPass(memory, x)
    emit = np.flatnonzero(x < 4)
    out = []
    for part in np.array_split(emit, chunks):
        out.append(experts.advance(int(part[-1]) + 1, part))
    return [np.concatenate([o[j] for o in out]) for j in range(3)], x[emit]


def bits(logp, y, e):
    return float(-logp[np.arange(len(y)), e, y].mean() / np.log(2))


@pytest.fixture(scope="module")
def genome():
    return random_digits(60_000, 1)


def test_memory__counts_of_every_order_match_direct_counting(genome):
    memory = Memory.build(both_strands(genome))
    stream = memory.stream
    rng = np.random.default_rng(0)
    for k in (1, 5, 12, 31):
        for i in rng.integers(40, len(genome), 5):
            context = stream[i - k : i]
            shift = 62 - 2 * k
            q = sum(int(d) << (2 * (k - 1 - j)) for j, d in enumerate(context[::-1]))
            lo = np.searchsorted(memory.codes >> shift, q, "left")
            hi = np.searchsorted(memory.codes >> shift, q, "right")
            counts = memory.cum[hi].astype(int) - memory.cum[lo]
            # direct: every position with >= 31 bases before it, same last k bases
            windows = np.lib.stride_tricks.sliding_window_view(stream, k + 1)
            match = (windows[:, :k] == context).all(1)
            starts = np.flatnonzero(match)
            nxt = starts + k
            runs = np.array(
                [(stream[max(0, p - 31) : p] < 4).all() and p >= 31 for p in nxt]
            )
            direct = np.bincount(stream[nxt[runs]], minlength=5)[:4]
            assert (counts == direct).all()


def test_experts__low_orders_equal_the_markov_baseline(genome):
    memory = Memory.build(both_strands(genome))
    test = random_digits(20_000, 2)
    (logp, _, _), y = run(memory, np.append(test, BREAK).astype(np.uint8))
    train = seq_markov.base_digits(both_strands(genome).astype(np.uint8) + 2)
    markov = seq_markov.markov_bits(train, np.append(test, -1).astype(np.int8), 4)
    for order in (2, 4):
        e = list(EXPERT_ORDERS).index(order)
        # the memory indexes positions with 31 bases before them only: the first 31
        # of each strand are missing from its counts, a few hundred of 120 k
        assert abs(bits(logp, y, e) - markov[order]) < 2e-3


def test_experts__chunked_run_equals_one_run_and_never_reads_ahead(genome):
    memory = Memory.build(both_strands(genome))
    x = np.concatenate([mutate(genome[1000:9000], 0.02, 3), random_digits(3000, 4)])
    x = np.concatenate([x, (3 - x[:4000])[::-1]]).astype(np.uint8)
    whole, _ = run(memory, x)
    chunked, _ = run(memory, x, chunks=7)
    for a, b in zip(whole, chunked, strict=True):
        assert np.array_equal(a, b)
    changed = x.copy()
    changed[9000:] = (x[9000:] + 1) % 4  # every later base differs
    early, _ = run(memory, changed)
    for a, b in zip(whole, early, strict=True):
        assert np.array_equal(a[:9001], b[:9001])  # up to and with position 9000
        assert not np.array_equal(a[9001:], b[9001:])


def test_experts__copy_pointers_follow_a_mutated_copy_and_an_inverted_repeat(genome):
    memory = Memory.build(both_strands(genome))
    copied = mutate(genome[20_000:30_000], 0.02, 7)  # 2% substitutions
    novel = random_digits(5000, 8)
    x = np.concatenate([copied, novel, (3 - novel)[::-1]]).astype(np.uint8)
    (_, z, pred), y = run(memory, x)
    best_memory = pred[:, 0]  # slots sorted best first
    region = slice(200, 10_000)
    hits = best_memory[region] == y[region]
    assert hits.mean() > 0.96  # ~98% expected: the pointer survives each SNP
    inverted = slice(15_000 + 50, 20_000)
    rc_slot = pred[:, MEMORY_SLOTS + 1]
    assert (rc_slot[inverted] == y[inverted]).mean() > 0.99  # self reverse complement
    assert (pred[10_050:15_000, :MEMORY_SLOTS] >= 0).mean() < 0.05  # novel: no copy


def test_memory__saves_and_loads_the_same_index(genome, tmp_path):
    memory = Memory.build(both_strands(genome[:5000]))
    memory.save(tmp_path / "memory")
    again = Memory.load(tmp_path / "memory")
    for name in ("stream", "order", "codes", "cum"):
        assert np.array_equal(getattr(memory, name), getattr(again, name))
