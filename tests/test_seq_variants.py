"""Zero-shot variant scores against the closed form of a strand-symmetric chain."""

import numpy as np
import pytest

from gperceiver.io import InputError
from gperceiver.seq.fasta import read_sequence_files
from gperceiver.seq.memory_lm import MemoryLM, pretrain_memory
from gperceiver.seq.variants import Variant, read_variants, score_variants
from seq_helpers import SymmetricChain, letters, write_fasta

LETTERS = "ACGT"


def plant(reference: np.ndarray, count: int, seed: int, flank: int):
    """SNVs, insertions and deletions at random positions away from the ends."""
    rng = np.random.default_rng(seed)
    out = []
    for pos in np.sort(
        rng.choice(np.arange(flank + 5, len(reference) - flank - 5), count, False)
    ):
        ref_base = LETTERS[reference[pos]]
        kind = rng.integers(0, 3)
        if kind == 0:
            alt = LETTERS[(reference[pos] + rng.integers(1, 4)) % 4]
            out.append(Variant("chr", int(pos) + 1, ref_base, alt))
        elif kind == 1:
            inserted = "".join(rng.choice(list(LETTERS), rng.integers(1, 4)))
            out.append(Variant("chr", int(pos) + 1, ref_base, ref_base + inserted))
        else:
            ref = letters(reference[pos : pos + 1 + rng.integers(1, 4)])
            out.append(Variant("chr", int(pos) + 1, ref, ref_base))
    return out


def closed_form(chain, reference, v: Variant, flank: int) -> float:
    """log2 P(alt window) - log2 P(ref window): both strands, by the chain's symmetry."""
    start, stop = v.pos - 1, v.pos - 1 + len(v.ref)
    up, down = reference[start - flank : start], reference[stop : stop + flank]
    windows = [
        np.concatenate([up, [LETTERS.index(c) for c in allele], down])
        for allele in (v.alt, v.ref)
    ]
    return chain.window_log2(windows[0]) - chain.window_log2(windows[1])


@pytest.fixture(scope="module")
def chain():
    return SymmetricChain(seed=4, sharpness=1.2)


def test_score_variants__exact_model_gives_the_closed_form_on_both_strands(chain):
    reference = chain.sample(5000, 1)
    variants = plant(reference, 40, 2, flank=30)
    table = score_variants({"chr": reference}, variants, chain, flank=30)
    truth = np.array([closed_form(chain, reference, v, 30) for v in variants])
    assert np.allclose(table["llr_forward"], truth, atol=1e-9)
    assert np.allclose(table["llr_reverse"], truth, atol=1e-9)
    assert np.allclose(table["llr"], truth, atol=1e-9)
    assert truth.std() > 1.0  # the planted variants differ in how likely they are


def test_score_variants__memory_model_trained_on_the_chain_recovers_the_llr(
    chain, tmp_path
):
    for i in range(2):
        write_fasta(
            tmp_path / f"g{i}.fa", {f"g{i}": letters(chain.sample(60_000, 10 + i))}
        )
    params = dict(samples_per_group=40_000, epochs=3, batch_size=1024)
    files = read_sequence_files([tmp_path / "g0.fa", tmp_path / "g1.fa"])
    pretrain_memory(files, tmp_path / "m", params)
    model = MemoryLM.load(tmp_path / "m")
    reference = chain.sample(20_000, 3)  # held out: never in the memory
    variants = [
        v for v in plant(reference, 200, 4, flank=40) if len(v.ref) == len(v.alt)
    ]
    table = score_variants({"chr": reference}, variants, model, flank=40)
    truth = np.array([closed_form(chain, reference, v, 40) for v in variants])
    assert np.corrcoef(table["llr"], truth)[0, 1] > 0.93
    error = np.abs(table["llr"] - truth)
    assert error.mean() < 0.25 * np.abs(truth).mean()


def test_score_variants__raises_when_ref_does_not_match_the_reference(chain):
    reference = chain.sample(500, 1)
    wrong = LETTERS[(reference[99] + 1) % 4]
    with pytest.raises(InputError, match=r"variant 1 \(chr:100\).*REF"):
        score_variants({"chr": reference}, [Variant("chr", 100, wrong, "A")], chain)
    with pytest.raises(InputError, match="'chrX' is not in the reference"):
        score_variants({"chr": reference}, [Variant("chrX", 100, "A", "C")], chain)


def test_read_variants__splits_alleles_and_refuses_symbolic_ones(tmp_path):
    path = tmp_path / "v.vcf"
    path.write_text(
        "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n"
        "chr\t5\t.\tA\tC,GT\nchr\t9\t.\tac\ta\n"
    )
    got = read_variants(path)
    assert [(v.pos, v.ref, v.alt) for v in got] == [
        (5, "A", "C"),
        (5, "A", "GT"),
        (9, "AC", "A"),
    ]
    path.write_text("#CHROM\tPOS\tID\tREF\tALT\nchr\t5\t.\tA\t<DEL>\n")
    with pytest.raises(InputError, match="line 2, REF/ALT A/<DEL>"):
        read_variants(path)
