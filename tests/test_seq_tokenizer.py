"""Nucleotide tokens and FASTA reading: round trips, IUPAC codes, soft-masking,
compressed files and one-line errors."""

import gzip
import lzma

import numpy as np
import pytest

from gperceiver.io import InputError
from gperceiver.seq import KmerTokenizer, decode, encode, read_fasta, reverse_complement
from gperceiver.seq.tokenizer import VOCAB, InvalidLetter

# IUPAC codes as the sets of bases they stand for (the definition, typed independently)
IUPAC_SETS = {
    "A": "A", "C": "C", "G": "G", "T": "T", "R": "AG", "Y": "CT", "S": "CG",
    "W": "AT", "K": "GT", "M": "AC", "B": "CGT", "D": "AGT", "H": "ACT",
    "V": "ACG", "N": "ACGT",
}  # fmt: skip
PAIR = {"A": "T", "C": "G", "G": "C", "T": "A"}


def random_letters(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    letters = np.array(list("ACGTNRYSWKMBDHV-acgtnrysw"))
    return "".join(rng.choice(letters, n))


def test_encode_decode__round_trip_keeps_case_and_ambiguity_codes():
    text = random_letters(5000)
    tokens, soft = encode(text)
    assert decode(tokens, soft) == text
    assert soft.sum() == sum(c.islower() for c in text)
    assert decode(tokens) == text.upper()


def test_encode__every_iupac_code_has_its_own_token():
    ids = {code: int(encode(code)[0][0]) for code in [*IUPAC_SETS, "-"]}
    assert len(set(ids.values())) == len(ids)
    assert all(VOCAB[i] == code for code, i in ids.items())
    assert encode("acgtn")[0].tolist() == encode("ACGTN")[0].tolist()


def test_reverse_complement__matches_the_iupac_base_sets():
    codes = list(IUPAC_SETS)
    tokens, soft = encode("".join(codes).lower())
    rc_tokens, rc_soft = reverse_complement(tokens, soft)
    for code, rc_code in zip(codes, reversed(decode(rc_tokens)), strict=True):
        complemented = {PAIR[b] for b in IUPAC_SETS[code]}
        assert set(IUPAC_SETS[rc_code]) == complemented, code
    assert rc_soft.all()
    again = reverse_complement(rc_tokens, rc_soft)
    assert np.array_equal(again[0], tokens) and np.array_equal(again[1], soft)


def test_encode__raises_on_invalid_letter_with_its_offset():
    with pytest.raises(InvalidLetter) as err:
        encode("ACGTU")
    assert err.value.offset == 4


def test_kmer_tokenizer__round_trip_and_unknown_kmers():
    tokens, _ = encode("ACGTTGCAAC" + "GN")
    kmers = KmerTokenizer(3)
    ids = kmers.encode(tokens)
    assert len(ids) == 4
    assert ids[0] == 0 * 16 + 1 * 4 + 2  # A=0 C=1 G=2 (first letter most significant)
    assert ids[-1] == kmers.unknown  # "CGN" holds N
    assert decode(kmers.decode(ids[:-1])) == "ACGTTGCAA"


def write_fasta(path, text: str, opener=open):
    with opener(path, "wt") as handle:
        handle.write(text)


FASTA = ">chr1 first record\nACGTNN\nacgRYk\n\n>chr2\nTTTT\r\n>empty\n>chr3\nG\n"


@pytest.mark.parametrize(
    "suffix, opener", [(".fa", open), (".fa.gz", gzip.open), (".fa.xz", lzma.open)]
)
def test_read_fasta__plain_gzip_and_xz_give_the_same_records(tmp_path, suffix, opener):
    path = tmp_path / f"genome{suffix}"
    write_fasta(path, FASTA, opener)
    records = list(read_fasta(path))
    assert [r.name for r in records] == ["chr1", "chr2", "empty", "chr3"]
    assert [
        decode(r.tokens, r.soft_mask) if len(r.tokens) else "" for r in records
    ] == [
        "ACGTNNacgRYk",
        "TTTT",
        "",
        "G",
    ]


def test_read_fasta__raises_on_bad_letter_naming_line_and_column(tmp_path):
    path = tmp_path / "bad.fa"
    write_fasta(path, ">a\nACGT\nACXT\n")
    with pytest.raises(InputError, match=r"bad.fa, line 3, column 3: 'X'"):
        list(read_fasta(path))


def test_read_fasta__raises_on_sequence_before_header(tmp_path):
    path = tmp_path / "table.tsv"
    write_fasta(path, "ACGT\n>a\nACGT\n")
    with pytest.raises(InputError, match="line 1: sequence before the first '>'"):
        list(read_fasta(path))


def test_read_fasta__raises_on_truncated_xz(tmp_path):
    path = tmp_path / "cut.fa.xz"
    write_fasta(path, ">a\n" + random_letters(20000).upper() + "\n", lzma.open)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match="cannot read"):
        list(read_fasta(path))
