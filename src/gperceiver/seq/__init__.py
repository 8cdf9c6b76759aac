"""DNA sequence models: FASTA reading, nucleotide tokens, causal LM with exact,
Performer (FAVOR+) or hierarchical attention, pretraining and bits-per-base."""

from gperceiver.seq.fasta import Record, read_fasta
from gperceiver.seq.model import SeqConfig, SeqLM
from gperceiver.seq.tokenizer import (
    VOCAB,
    KmerTokenizer,
    decode,
    encode,
    reverse_complement,
)

__all__ = [
    "VOCAB",
    "KmerTokenizer",
    "Record",
    "SeqConfig",
    "SeqLM",
    "decode",
    "encode",
    "read_fasta",
    "reverse_complement",
]
