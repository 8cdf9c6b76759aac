"""The order-k Markov baseline of benchmarks/seq_markov.py on a chain of known order."""

import importlib.util
from pathlib import Path

import numpy as np

from gperceiver.seq import encode
from seq_helpers import entropy_rate, order2_chain

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "seq_markov.py"
spec = importlib.util.spec_from_file_location("seq_markov", SCRIPT)
seq_markov = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seq_markov)


def digits(text: str) -> np.ndarray:
    return np.append(seq_markov.base_digits(encode(text)[0]), np.int8(-1))


def test_markov_bits__order_two_reaches_the_entropy_rate_of_an_order_two_chain():
    train, test = digits(order2_chain(200_000, 1)), digits(order2_chain(50_000, 3))
    bits = seq_markov.markov_bits(train, test, max_order=6)
    assert abs(bits[0] - 2.0) < 0.1  # no context: about uniform
    assert abs(bits[2] - entropy_rate()) < 0.02
    assert bits[1] > bits[2] + 0.5  # one base of context is not enough
    assert min(bits) == bits[2] or min(bits) > bits[2] - 0.005  # more order: no gain


def test_markov_bits__ambiguous_bases_break_contexts_and_are_not_scored():
    train = digits("ACGT" * 500)
    test = digits("ACGTNACGTACGT")  # N is not scored; the base after it backs off
    bits = seq_markov.markov_bits(train, test, max_order=3)
    assert len(bits) == 4 and np.isfinite(bits).all()
    # 12 scored bases (not the N); all but two are near-certain from their context:
    # the first base and the one after N have no valid context, ~2 bits each
    assert abs(bits[3] - 2 * 2 / 12) < 0.02
