"""Accuracy of the panel copy alone on the masked validation targets of a model
pretrained with ``{"panel": true}``: the argmax of the copied genotype
probabilities at the very targets ``MaskedMarkerTask.evaluate`` scores (seed-0
generator, batches of 32), beside the model's ``val_accuracy`` in metrics.csv.

    python benchmarks/pretrain_panel_copy.py MODEL_DIR MARKERS CHROMS [VAL_FRACTION]
"""

import sys

import numpy as np
import torch

from gperceiver.api import read_genotypes
from gperceiver.pretraining import load_masked_model, split_individuals
from gperceiver.tasks.masked import MaskedConfig, complete_genotypes
from gperceiver.tasks.masked_panel import PanelMaskedMarkerTask, batch_copies


def main(model_dir, markers, chroms, val_fraction=0.1) -> float:
    g = read_genotypes(markers, chroms)
    model, config = load_masked_model(model_dir, g)
    train, val = split_individuals(
        g.n_individuals, val_fraction, config["train"]["seed"]
    )
    masked_cfg = MaskedConfig(**config["masked"])
    task = PanelMaskedMarkerTask(g, g.allele_frequencies(train), masked_cfg)
    complete = complete_genotypes(g.ploidy, g.n_alleles)  # (G, A), the copy's order
    generator = torch.Generator().manual_seed(0)
    right = total = 0
    for start in range(0, len(val), 32):
        rows = val[start : start + 32]
        _, inputs, targets, valid, counts = task.batch(rows, generator)
        copy = batch_copies(model.panel, g, np.sort(rows), inputs, targets, valid)
        index = targets[..., None].expand(-1, -1, copy.shape[-1])
        best = complete[copy.gather(1, index).argmax(-1)]  # (B, T, A)
        right += int(((best == counts).all(-1) & valid).sum())
        total += int(valid.sum())
    print(f"panel copy alone: accuracy {right / total:.4f} on {total} targets")
    return right / total


if __name__ == "__main__":
    main(*sys.argv[1:4], *map(float, sys.argv[4:5]))
