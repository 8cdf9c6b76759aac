"""Fit the prior-fitted relatives network (issue 22) on simulated populations and
write its weights: the shipped ones are made by

    OMP_NUM_THREADS=1 python benchmarks/train_relatives_prior.py \\
        --out src/gperceiver/weights/relatives_prior

(defaults: seed 0, 400 populations; one thread). Writes OUT.safetensors and
OUT.json (format version, settings, the validation-loss history, wall time).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import torch

from gperceiver.incontext_prior import PriorSettings, save_prior, train_prior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path without suffix")
    parser.add_argument("--settings", default="{}", help="JSON PriorSettings")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = PriorSettings(**json.loads(args.settings))
    started = time.perf_counter()
    net, history = train_prior(settings, log=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - started
    meta = {
        "made_by": "benchmarks/train_relatives_prior.py",
        "settings": asdict(settings),
        "history": history,
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    save_prior(net, args.out, meta)
    print(f"wrote {args.out}.safetensors, .json ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
