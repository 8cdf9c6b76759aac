"""Held-out bits per base of DNA models and every baseline on the same bases, one run.

- sequence models (``--model DIR``, repeatable): memory models (``seq pretrain --kind
  memory``) and transformers (``seq pretrain``) score every A/C/G/T of the held-out
  file, causally; a memory model's memory holds the training files only (the
  held-out file enters through its own causal prefix, as in a compressor);
- order-k Markov (k = 2..16), Witten-Bell interpolated, counted on both strands of
  the training files (``seq_markov.py``), the same scored bases;
- reference-conditional compressors: ``xz -9e`` and ``zstd --long -19``, bits =
  8 * (size(train + test) - size(train)) / scored bases, on upper-cased text (A C G T,
  N for any other code, one line per record, no headers).

Usage: python benchmarks/seq_memory.py TRAIN.fna.xz ... --test HELDOUT.fna.xz \
           --model kp-memory [--model kp-60min] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from seq_markov import digits_of, markov_bits  # noqa: E402

from gperceiver.seq.experts import EXPERT_ORDERS  # noqa: E402
from gperceiver.seq.fasta import (
    read_fasta,  # noqa: E402
    read_sequence_files,  # noqa: E402
)
from gperceiver.seq.lm import bits_per_base  # noqa: E402
from gperceiver.seq.loading import MEMORY_KIND, load_scorer, model_kind  # noqa: E402
from gperceiver.seq.memory import join_digits  # noqa: E402
from gperceiver.seq.memory_lm import expert_inputs  # noqa: E402
from gperceiver.seq.model import SeqLM  # noqa: E402

COMPRESSORS = {
    "xz -9e": ["xz", "-9e", "-T1", "-c"],
    "zstd --long -19": ["zstd", "--long", "-19", "-T1", "-c", "-q"],
}


def text_of(paths) -> bytes:
    """Upper-cased A C G T / N text, one line per record."""
    lut = np.full(256, ord("N"), np.uint8)
    for i, letter in enumerate(b"ACGT"):
        lut[i + 2] = letter
    lines = [lut[r.tokens].tobytes() + b"\n" for p in paths for r in read_fasta(p)]
    return b"".join(lines)


def compressed_size(command, data: bytes) -> int:
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.seek(0)
        out = subprocess.run(command, stdin=handle, capture_output=True, check=True)
    return len(out.stdout)


def conditional_bits(command, train: bytes, test: bytes, scored: int) -> dict:
    started = time.perf_counter()
    alone = compressed_size(command, train)
    both = compressed_size(command, train + test)
    return {
        "bits_per_base": 8 * (both - alone) / scored,
        "test_alone_bits": 8 * compressed_size(command, test) / scored,
        "seconds": round(time.perf_counter() - started, 1),
    }


def model_bits(directory, test_path) -> dict:
    started = time.perf_counter()
    if model_kind(directory) == MEMORY_KIND:
        bits, n = load_scorer(directory).bits_per_base(read_sequence_files([test_path]))
    else:
        model = SeqLM.from_pretrained(directory)
        records = read_sequence_files([test_path])[0].records
        bits, n = bits_per_base(model, records)
    return {
        "bits_per_base": bits,
        "scored": n,
        "seconds": time.perf_counter() - started,
    }


def expert_bits(directory, test_path) -> dict:
    """Bits per base of each count expert of a memory model alone (same bases)."""
    model = load_scorer(directory)
    total, n = np.zeros(len(EXPERT_ORDERS)), 0
    x = join_digits([r.tokens for r in read_fasta(test_path)], both_strands=False)
    positions = np.flatnonzero(x < 4)
    context = model.mixer.config.neural_context
    for logp, _, _, _, y in expert_inputs(
        model.memory, x, positions, model.run.anchor_order, context
    ):
        total -= logp[np.arange(len(y)), :, y].sum(0) / np.log(2.0)
        n += len(y)
    return {int(k): float(b / n) for k, b in zip(EXPERT_ORDERS, total, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train", nargs="+", help="training FASTA files")
    parser.add_argument("--test", required=True, help="held-out FASTA file")
    parser.add_argument("--model", action="append", default=[], help="model directory")
    parser.add_argument("--max-order", type=int, default=16)
    parser.add_argument("--skip-markov", action="store_true")
    parser.add_argument(
        "--experts",
        action="store_true",
        help="also score each count expert of the memory models alone",
    )
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    results, rows = {"load_before": os.getloadavg()}, []
    test_digits = digits_of([args.test], both_strands=False)
    scored = int((test_digits >= 0).sum())
    print(f"held-out bases scored: {scored}", flush=True)
    for directory in args.model:
        r = model_bits(directory, args.test)
        assert r["scored"] == scored, "every model scores the same bases"
        rows.append((f"model {Path(directory).name}", r["bits_per_base"], r["seconds"]))
        print(
            f"{rows[-1][0]}: {r['bits_per_base']:.4f} ({r['seconds']:.0f} s)",
            flush=True,
        )
        if args.experts and model_kind(directory) == MEMORY_KIND:
            for k, bits in expert_bits(directory, args.test).items():
                rows.append((f"memory count expert, order {k} (interpolated)", bits, 0))
    if not args.skip_markov:
        started = time.perf_counter()
        train = digits_of(args.train, both_strands=True)
        bits = markov_bits(train, test_digits, args.max_order)
        seconds = time.perf_counter() - started
        del train
        rows += [(f"order {k}", b, seconds) for k, b in enumerate(bits) if k >= 2]
    train_text, test_text = text_of(args.train), text_of([args.test])
    for name, command in COMPRESSORS.items():
        r = conditional_bits(command, train_text, test_text, scored)
        rows.append((f"{name} | train", r["bits_per_base"], r["seconds"]))
        rows.append((f"{name} alone", r["test_alone_bits"], r["seconds"]))
        print(f"{name}: {r['bits_per_base']:.4f}", flush=True)
    results["load_after"] = os.getloadavg()
    results["rows"] = [
        {"model": m, "bits_per_base": b, "seconds": s} for m, b, s in rows
    ]
    print("model\tbits_per_base\tseconds")
    for m, b, s in rows:
        print(f"{m}\t{b:.4f}\t{s:.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
