"""The fixed part of a model that fits its genetic part elsewhere (the Perceiver):
fixed effects estimated per block by GLS in the REML GBLUP of the training records,
the responses corrected for them, and the fixed part of any record.

``evaluate`` absorbs them this way before it trains the network of a fold, and
``finetune`` before it trains the model it saves (the fitted levels and
coefficients travel in its ``config.json``, :meth:`FixedPart.to_dict`). Only the
records given to :func:`fit_fixed_part` enter the estimates: validation records
never do.

Shape letters: n records, p columns of a block's design ``X``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .estimators import GBLUP
from .fixed_effects import FixedDesign, FixedEffects
from .kernels import Kernel


@dataclass
class FixedPart:
    """Per block code: the fitted design (levels, covariate means) and its GLS
    coefficients ``beta`` ``(p,)`` (intercept first)."""

    designs: dict[int, FixedDesign]
    betas: dict[int, np.ndarray]

    @property
    def spec(self) -> FixedEffects:
        return next(iter(self.designs.values())).spec

    def values(self, records: pd.DataFrame, warn: bool = True) -> np.ndarray:
        """The fixed part ``(n,)`` of ``records`` (``block`` codes and the
        fixed-effect columns): ``X beta`` of their block, a level unseen in
        training at the mean level effect (with a warning counting such records,
        :meth:`FixedDesign.matrix`); NaN in a block without training records."""
        out = np.full(len(records), np.nan)
        blocks = records["block"].to_numpy()
        for block, design in self.designs.items():
            here = blocks == block
            if here.any():
                out[here] = design.matrix(records[here], warn) @ self.betas[block]
        return out

    def mean_values(self, blocks) -> np.ndarray:
        """The fixed part ``(E,)`` of a record at the mean of the training levels
        and covariates in each of ``blocks`` (NaN for a block without training
        records): what a prediction without records adds to the genetic value."""
        return np.array(
            [
                self.designs[b].mean_row() @ self.betas[b] if b in self.designs
                else np.nan
                for b in (int(b) for b in blocks)
            ]
        )  # fmt: skip

    def corrected(self, records: pd.DataFrame) -> pd.DataFrame:
        """``records`` with ``response`` less their fixed part."""
        return records.assign(response=records["response"] - self.values(records))

    def effects(self, labels=None) -> pd.DataFrame:
        """``block, effect, value``: every block's coefficients by name (blocks
        named by ``labels[code]`` when given)."""
        rows = [
            {
                "block": block if labels is None else labels[block],
                "effect": name,
                "value": float(value),
            }
            for block, design in self.designs.items()
            for name, value in zip(design.names_, self.betas[block], strict=True)
        ]
        return pd.DataFrame(rows, columns=["block", "effect", "value"])

    def to_dict(self) -> dict:
        """JSON values (floats written exactly); :meth:`from_dict` reads them."""
        return {
            "blocks": [
                {
                    "block": int(block),
                    "design": design.to_dict(),
                    "beta": [float(v) for v in self.betas[block]],
                }
                for block, design in self.designs.items()
            ]
        }

    @classmethod
    def from_dict(cls, values: dict) -> FixedPart:
        entries = values["blocks"]
        return cls(
            {e["block"]: FixedDesign.from_dict(e["design"]) for e in entries},
            {e["block"]: np.array(e["beta"], dtype=np.float64) for e in entries},
        )


def fit_fixed_part(
    train: pd.DataFrame, relationship: Kernel, spec: FixedEffects
) -> FixedPart:
    """Fit, per block of ``train`` (``name``, ``response``, ``block`` and the
    columns of ``spec``), the REML GBLUP with the fixed effects ``spec`` on
    ``relationship`` and keep its GLS coefficients."""
    designs, betas = {}, {}
    for block in np.unique(train["block"]):
        records = train[(train["block"] == block).to_numpy()]
        model = GBLUP(relationship, fixed=spec).fit(records, None)
        designs[int(block)], betas[int(block)] = model.design_, model.fit_.beta
    return FixedPart(designs, betas)


__all__ = ["FixedPart", "fit_fixed_part"]
