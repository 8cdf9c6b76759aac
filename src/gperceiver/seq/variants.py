"""Zero-shot variant scoring: log-likelihood ratio of alternative vs reference allele.

For a variant with reference allele ``R`` at ``pos`` and alternative ``A``, the window
``U + allele + D`` takes ``flank`` reference bases on each side. On the forward strand
the model scores the allele and ``D`` given ``U``; on the reverse strand it reads the
reverse complement ``rc(D) + rc(allele) + rc(U)`` and scores ``rc(allele) + rc(U)``
given ``rc(D)``. Per strand

    LLR = log2 P(alt window part | context) - log2 P(ref window part | context)

(bits; the scored part includes the flank after the allele, which is where a variant
breaks or keeps the contexts that follow it), and ``llr`` is the mean of both strands.
Any model with ``log2_probs(digits) -> (T,) log2 p(x[t] | x[:t])`` can score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io import InputError, atomic_path
from .fasta import open_binary, read_fasta
from .memory import BREAK, digits_of_tokens
from .tokenizer import encode

_ALLELE = set("ACGTN")


@dataclass
class Variant:
    chrom: str
    pos: int  # 1-based position of the first reference base
    ref: str
    alt: str


def read_variants(path) -> list[Variant]:
    """SNVs and indels of a VCF (plain or gzip); one entry per alternative allele."""
    out = []
    with open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            if raw.startswith(b"#") or not raw.strip():
                continue
            cols = raw.decode(errors="replace").rstrip("\r\n").split("\t")
            where = f"line {line_no}"
            if len(cols) < 5 or not cols[1].isdigit():
                raise InputError(
                    path, where, "expected CHROM POS ID REF ALT (tab-separated)",
                    "pass a VCF file",
                )  # fmt: skip
            for alt in cols[4].upper().split(","):
                ref = cols[3].upper()
                if not (set(ref) <= _ALLELE and set(alt) <= _ALLELE and ref and alt):
                    raise InputError(
                        path, f"{where}, REF/ALT {cols[3]}/{alt}",
                        "only sequence alleles (A C G T N) can be scored",
                        "drop symbolic or missing alleles (<DEL>, *, .) first",
                    )  # fmt: skip
                out.append(Variant(cols[0], int(cols[1]), ref, alt))
    return out


def reference_digits(path) -> dict[str, np.ndarray]:
    """Record name -> digits (0..3, ``BREAK`` for other codes)."""
    return {r.name: digits_of_tokens(r.tokens) for r in read_fasta(path)}


def _digits(allele: str) -> np.ndarray:
    return digits_of_tokens(encode(allele)[0])


def _rc(x: np.ndarray) -> np.ndarray:
    return np.where(x < 4, 3 - x, BREAK)[::-1].astype(np.uint8)


def _strand_scores(model, up, allele, down) -> tuple[float, float]:
    """(forward, reverse) summed log2 p of the scored part of one window."""
    forward = model.log2_probs(np.concatenate([up, allele, down]))
    reverse = model.log2_probs(_rc(np.concatenate([up, allele, down])))
    return (
        float(np.nansum(forward[len(up) :])),
        float(np.nansum(reverse[len(down) :])),
    )


def score_variants(reference, variants, model, flank: int = 128, path="VCF"):
    """Table of chrom, pos, ref, alt, llr_forward, llr_reverse, llr (bits)."""
    rows = []
    for i, v in enumerate(variants):
        seq = reference.get(v.chrom)
        start = v.pos - 1
        if seq is None:
            raise InputError(
                path, f"variant {i + 1} ({v.chrom}:{v.pos})",
                f"chromosome {v.chrom!r} is not in the reference",
                "use the reference FASTA the VCF was called on",
            )  # fmt: skip
        stop = start + len(v.ref)
        if (
            start < 0
            or stop > len(seq)
            or not (seq[start:stop] == _digits(v.ref)).all()
        ):
            raise InputError(
                path, f"variant {i + 1} ({v.chrom}:{v.pos})",
                f"REF {v.ref} does not match the reference there",
                "use the reference FASTA the VCF was called on",
            )  # fmt: skip
        up, down = seq[max(0, start - flank) : start], seq[stop : stop + flank]
        ref_f, ref_r = _strand_scores(model, up, _digits(v.ref), down)
        alt_f, alt_r = _strand_scores(model, up, _digits(v.alt), down)
        f, r = alt_f - ref_f, alt_r - ref_r
        rows.append((v.chrom, v.pos, v.ref, v.alt, f, r, (f + r) / 2))
    columns = ["chrom", "pos", "ref", "alt", "llr_forward", "llr_reverse", "llr"]
    return pd.DataFrame(rows, columns=columns)


def write_scores(table: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.5f")


class TransformerScorer:
    """``log2_probs`` of a :class:`~gperceiver.seq.SeqLM` over one window."""

    def __init__(self, model):
        self.model = model.eval()

    def log2_probs(self, x: np.ndarray) -> np.ndarray:
        import torch

        tokens = np.where(x < 4, x + 2, 6).astype(np.int64)  # N for breaks
        inputs = torch.from_numpy(np.concatenate([[1], tokens]))[None]  # <sep> first
        from ..device import autocast, model_device

        device = model_device(self.model)
        with torch.no_grad(), autocast(device):
            logits = self.model(inputs[:, :-1].to(device)).float()
            lp = torch.log_softmax(logits, -1)[0]
        out = lp.gather(1, inputs[0, 1:, None].to(device))[:, 0].cpu().numpy()
        return np.where(x < 4, out / np.log(2.0), np.nan)
