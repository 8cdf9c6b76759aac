"""Imputed genotypes as VCF/BCF: ``GT`` (best guess), ``DS`` (expected dose of each
ALT allele), ``GP`` (genotype probabilities in VCF order) and ``INFO/DR2`` (the
estimated squared correlation of each ALT dose with the truth, as Beagle writes
it) plus ``INFO/AF`` (estimated ALT frequencies) and the ``IMP`` flag on markers
no target was typed at.

Probabilities and doses are written with 2 decimals (as Beagle does); DS is the
dose of the rounded GP, so the two agree. REF/ALT are the placeholder bases of
:mod:`gperceiver.io.vcf`.
"""

from __future__ import annotations

import datetime
import gzip

import numpy as np

from ..data import MISSING
from .atomic import atomic_path
from .variants import integer_positions
from .vcf import placeholder_alleles
from .vcf_writer import bcf_from_text

IMPUTED_SUFFIXES = (".vcf", ".vcf.gz", ".bcf")


def vcf_genotype_order(complete: np.ndarray) -> np.ndarray:
    """Order of the complete genotypes ``(G, A)`` copy counts that VCF uses for GP
    (colexicographic in the sorted allele indices: 0/0, 0/1, 1/1, 0/2, ...)."""
    ids = [tuple(reversed(np.repeat(np.arange(len(c)), c).tolist())) for c in complete]
    return np.array(sorted(range(len(ids)), key=lambda i: ids[i]))


def full_probabilities(result, rows: slice) -> np.ndarray:
    """GP ``(N', M, G)`` for the individuals ``rows``: one-hot where called, the
    imputed probabilities elsewhere."""
    g = result.genotypes
    counts = np.stack(
        [(g.alleles[rows] == k + 1).sum(-1) for k in range(g.n_alleles)], -1
    )  # (N', M, A)
    match = (counts[:, :, None, :] == result.complete[None, None]).all(-1)
    probs = match.astype(np.float32)  # (N', M, G)
    lo, hi = rows.start, rows.stop
    sel = (result.rows >= lo) & (result.rows < hi)
    probs[result.rows[sel] - lo, result.loci[sel]] = result.probabilities[sel]
    return probs


def dose_r2(result) -> np.ndarray:
    """DR2 ``(M, A - 1)``: ``(sum d^2 - (sum d)^2/n) / (sum E[x^2] - (sum d)^2/n)``
    with ``d`` each individual's expected ALT dose and ``x`` its true dose."""
    r2 = getattr(result, "r2", None)
    if r2 is not None:
        return r2
    alt = result.complete[:, 1:].astype(np.float64)
    n = result.genotypes.n_individuals
    sums = np.zeros((3, result.genotypes.n_markers, alt.shape[1]))
    for start in range(0, n, 256):
        p = full_probabilities(result, slice(start, min(n, start + 256)))
        d = p.astype(np.float64) @ alt
        sums += [d.sum(0), (d**2).sum(0), (p @ alt**2).sum(0)]
    mean = sums[0] ** 2 / max(n, 1)
    den = sums[2] - mean
    r2 = np.where(den > 1e-12, (sums[1] - mean) / np.maximum(den, 1e-12), 0.0)
    return np.clip(r2, 0, 1)


def _entry_strings(result, rows: slice, order: np.ndarray) -> np.ndarray:
    """``GT:DS:GP`` strings ``(N', M)`` of the individuals ``rows``."""
    alleles = result.genotypes.alleles[rows]  # (N', M, P)
    n, m, ploidy = alleles.shape
    gp = np.rint(full_probabilities(result, rows)[..., order] * 100).astype(np.uint8)
    keys = np.concatenate([alleles.reshape(n * m, -1), gp.reshape(n * m, -1)], 1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    alt = result.complete[order][:, 1:]  # (G, A - 1) in VCF order
    strings = []
    for row in unique:
        gt = "/".join("." if a == MISSING else str(int(a) - 1) for a in row[:ploidy])
        probs = row[ploidy:].astype(np.float64) / 100
        dose = ",".join(f"{d:.2f}" for d in probs @ alt)
        strings.append(f"{gt}:{dose}:" + ",".join(f"{q:.2f}" for q in probs))
    return np.array(strings, dtype=object)[inverse.reshape(n, m)]


def write_imputed_vcf(result, path, typed=None, source: str = "gperceiver") -> None:
    """Write an imputation result as VCF (``.vcf``, ``.vcf.gz``) or BCF (``.bcf``).

    ``typed`` (M,) bool: markers the targets were typed at (the others get IMP).
    """
    g = result.genotypes
    chunks = [(0, result, typed)]
    write_imputed_chunks(chunks, g.markers, g.names, g.n_alleles, path, source)


def write_imputed_chunks(chunks, markers, names, n_alleles, path, source="gperceiver"):
    """Write imputed records chunk by chunk (atomically: a temporary file, renamed
    when the last chunk is in), so that only one chunk is ever held.

    ``chunks``: an iterable, in marker order, of ``(lo, result, typed)``: the
    imputation ``result`` of every individual on the ``markers`` ``lo:lo + m`` and
    ``typed`` (m,) bool or None; ``markers`` the whole map (the header's contigs),
    ``names`` (N,) the samples.
    """
    if str(path).endswith(".bcf"):
        bcf_from_text(
            lambda text: write_imputed_chunks(
                chunks, markers, names, n_alleles, text, source
            ),
            path,
        )
        return
    pos, original = integer_positions(markers)
    fields = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"]
    header = _header(markers, pos, source)
    header.append("\t".join(fields + [str(s) for s in names]))
    gz = str(path).endswith(".gz")
    with (
        atomic_path(path) as tmp,
        gzip.open(tmp, "wt", compresslevel=6, newline="\n")
        if gz
        else open(tmp, "w", newline="\n") as out,
    ):
        out.write("\n".join(header) + "\n")
        sites = _Sites(markers, pos, original, n_alleles)
        for lo, result, typed in chunks:
            _write_records(out, result, typed, sites, lo)


class _Sites:
    """The fixed columns of every marker of the map (CHROM, POS, ID, REF, ALT)."""

    def __init__(self, markers, pos, original, n_alleles):
        self.markers, self.pos, self.original = markers, pos, original
        self.chroms = markers.chrom_labels().astype(str)
        self.ref, *alt = placeholder_alleles(n_alleles)
        self.alt = ",".join(alt) if alt else "."


def _write_records(out, result, typed, sites: _Sites, lo: int) -> None:
    """The records of ``result``'s markers, map markers ``lo:lo + m``."""
    g = result.genotypes
    order = vcf_genotype_order(result.complete)
    r2, af = dose_r2(result), _alt_frequencies(result)
    entries = np.empty((g.n_individuals, g.n_markers), dtype=object)
    for start in range(0, g.n_individuals, 256):
        rows = slice(start, min(start + 256, g.n_individuals))
        entries[rows] = _entry_strings(result, rows, order)
    for j in range(g.n_markers):
        info = [
            "DR2=" + ",".join(f"{v:.2f}" for v in r2[j]),
            "AF=" + ",".join(f"{v:.4f}" for v in af[j]),
        ]
        if typed is not None and not typed[j]:
            info.append("IMP")
        k = lo + j
        if not sites.original:
            info.append(f"MAPPOS={sites.markers.pos[k]!r}")
        fixed = (
            f"{sites.chroms[k]}\t{sites.pos[k]}\t{sites.markers.names[k]}\t{sites.ref}"
            f"\t{sites.alt}\t.\tPASS\t{';'.join(info)}\tGT:DS:GP\t"
        )
        out.write(fixed + "\t".join(entries[:, j]) + "\n")


def _alt_frequencies(result) -> np.ndarray:
    """Estimated ALT allele frequencies ``(M, A - 1)`` from the best guesses."""
    a = result.genotypes.alleles
    return np.stack(
        [(a == k + 1).mean((0, 2)) for k in range(1, result.genotypes.n_alleles)], -1
    )


def _header(markers, pos, source) -> list[str]:
    lines = [
        "##fileformat=VCFv4.2",
        f"##fileDate={datetime.date.today():%Y%m%d}",
        f"##source={source}",
        '##INFO=<ID=DR2,Number=A,Type=Float,Description="Dosage R-squared: '
        'estimated squared correlation between estimated and true ALT dose">',
        '##INFO=<ID=AF,Number=A,Type=Float,Description="Estimated ALT allele '
        'frequency">',
        '##INFO=<ID=IMP,Number=0,Type=Flag,Description="Imputed marker">',
        "##INFO=<ID=MAPPOS,Number=1,Type=String,"
        'Description="Marker position in the input map, decimal '
        '(POS holds its rank)">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=DS,Number=A,Type=Float,Description="Estimated ALT dose">',
        '##FORMAT=<ID=GP,Number=G,Type=Float,Description="Estimated genotype '
        'probabilities">',
    ]
    for c, name in enumerate(markers.chrom_names):
        sel = markers.chrom == c
        if sel.any():
            lines.append(f"##contig=<ID={name},length={int(pos[sel].max())}>")
    return lines
