"""Open either kind of sequence model directory (transformer or memory)."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import read_json
from ..io import InputError
from .memory_lm import MEMORY_KIND, MemoryLM

__all__ = ["MEMORY_KIND", "bits_per_base", "load_scorer", "model_kind"]


def model_kind(directory) -> str:
    """``gperceiver-seq-lm`` (transformer) or ``gperceiver-seq-memory``."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise InputError(
            directory, None, "no config.json", "pass a `seq pretrain` directory"
        )
    return read_json(path).get("kind", "")


def load_scorer(directory, device: str = "cpu"):
    """A model with ``log2_probs(digits)``: the memory LM, or a transformer adapter."""
    if model_kind(directory) == MEMORY_KIND:
        return MemoryLM.load(directory, device)
    from .model import SeqLM
    from .variants import TransformerScorer

    return TransformerScorer(SeqLM.from_pretrained(directory, device))


def bits_per_base(directory, files, overlap: int | None = None, device: str = "cpu"):
    """Held-out bits per base of the model in ``directory`` (either kind) on
    ``files`` (:class:`~gperceiver.seq.fasta.SequenceFile`), and the number of
    scored bases. A transformer reads the first file's records with windows
    overlapping by ``overlap`` positions (default a quarter of its context)."""
    if model_kind(directory) == MEMORY_KIND:
        return MemoryLM.load(directory, device).bits_per_base(files)
    from .lm import bits_per_base as transformer_bits
    from .model import SeqLM

    model = SeqLM.from_pretrained(directory, device)
    return transformer_bits(model, files[0].records, overlap)
