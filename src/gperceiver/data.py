"""The data model every module shares: marker maps, genotypes and phenotypes.

One module on purpose (over 500 lines): the design keeps the one data model in one
place, read top to bottom, and every other module imports from here.

Shape letters: N individuals, M markers, P ploidy (copies per locus), A real alleles.
Allele ids are ``1..A``; ``MISSING`` (0) marks a copy that was not called.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

MISSING = 0  # allele id of an uncalled copy


def natural_key(label: str) -> tuple:
    """Sort key putting ``chr2`` before ``chr10`` and ``1B`` before ``2A``."""
    parts = re.split(r"(\d+)", str(label))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p)


def smallest_uint(max_value: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


@lru_cache(maxsize=64)
def allele_decoder(ploidy: int, n_alleles: int) -> np.ndarray:
    """Table mapping genotype codes to sorted allele multisets, shape ``(codes, P)``.

    Row ``c`` lists the allele ids of code ``c``: every sorted multiset of ``ploidy``
    ids drawn from ``0..n_alleles`` (0 = missing copy), in lexicographic order, so
    files written for the original tool read unchanged.

    >>> allele_decoder(2, 2).tolist()
    [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 2]]
    """
    if not 1 <= ploidy <= 16:
        raise ValueError(f"ploidy must be between 1 and 16, got {ploidy}")
    if not 1 <= n_alleles <= 255:
        raise ValueError(f"n_alleles must be between 1 and 255, got {n_alleles}")
    table = np.array(
        list(itertools.combinations_with_replacement(range(n_alleles + 1), ploidy)),
        dtype=np.uint8,
    )
    table.setflags(write=False)
    return table


def genotype_encoder(ploidy: int, n_alleles: int) -> dict[tuple[int, ...], int]:
    """Inverse of :func:`allele_decoder`: sorted allele tuple -> code."""
    return {
        tuple(row): code
        for code, row in enumerate(allele_decoder(ploidy, n_alleles).tolist())
    }


def codes_to_alleles(codes: np.ndarray, ploidy: int, n_alleles: int) -> np.ndarray:
    """Decode genotype codes ``(N, M)`` into allele ids ``(N, M, P)`` (uint8)."""
    return allele_decoder(ploidy, n_alleles)[codes]


def alleles_to_codes(alleles: np.ndarray, n_alleles: int) -> np.ndarray:
    """Encode allele ids ``(N, M, P)`` as codes ``(N, M)`` in the smallest dtype.

    A locus's code is the rank of its sorted multiset among all multisets
    (combinatorial number system); for small tables a lookup replaces the arithmetic.
    """
    ploidy = alleles.shape[-1]
    k = n_alleles + 1  # ids 0..n_alleles
    n_codes = _n_multisets(k, ploidy)
    dtype = smallest_uint(n_codes - 1)
    a = np.sort(alleles, axis=-1)
    if k**ploidy <= 1 << 20:
        radix = k ** np.arange(ploidy, dtype=np.int64)
        table = np.zeros(k**ploidy, dtype=dtype)
        decoded = allele_decoder(ploidy, n_alleles).astype(np.int64)
        table[decoded @ radix] = np.arange(n_codes)
        index = np.zeros(a.shape[:-1], dtype=np.int64)
        for i in range(ploidy):
            index += a[..., i] * radix[i]
        return table[index]
    a = a.astype(np.int64)
    code = np.zeros(a.shape[:-1], dtype=np.int64)
    previous = np.zeros(a.shape[:-1], dtype=np.int64)
    for i in range(ploidy):
        remaining = ploidy - i  # slots still to fill, including this one
        for v in range(k - 1):
            # multisets whose slot i holds v (< a_i) and later slots ids >= v
            smaller = (v >= previous) & (v < a[..., i])
            code += smaller * _n_multisets(k - v, remaining - 1)
        previous = a[..., i]
    return code.astype(dtype)


@lru_cache(maxsize=4096)
def _n_multisets(n_ids: int, size: int) -> int:
    from math import comb

    return comb(n_ids + size - 1, size)


def dosage_alleles(dosage: np.ndarray, ploidy: int) -> np.ndarray:
    """Copies of allele 2 ``(N, M)`` (``0..ploidy``; negative: missing) -> sorted
    allele ids ``(N, M, P)`` uint8: ``P - d`` copies of allele 1, then ``d`` of 2."""
    copy = np.arange(ploidy)[None, None, :]
    alleles = np.where(copy < ploidy - dosage[..., None], 1, 2).astype(np.uint8)
    alleles[dosage < 0] = MISSING
    return alleles


@dataclass(frozen=True)
class MarkerMap:
    """Markers ordered by chromosome (natural order) then position.

    ``chrom`` holds indices into ``chrom_names``; ``pos`` is in the file's unit
    (bp or cM), ``(M,)`` float64.
    """

    names: np.ndarray  # (M,) str
    chrom: np.ndarray  # (M,) int index into chrom_names
    pos: np.ndarray  # (M,) float64
    chrom_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_columns(cls, chrom_labels, names, pos) -> tuple[MarkerMap, np.ndarray]:
        """Build a sorted map; also returns the permutation applied to the inputs."""
        chrom_labels = np.asarray(chrom_labels).astype(str)
        chrom_names = tuple(sorted(set(chrom_labels.tolist()), key=natural_key))
        chrom_index = {c: i for i, c in enumerate(chrom_names)}
        chrom = np.array([chrom_index[c] for c in chrom_labels], dtype=np.int64)
        pos = np.asarray(pos, dtype=np.float64)
        order = np.lexsort((pos, chrom))
        return (
            cls(
                np.asarray(names).astype(str)[order],
                chrom[order],
                pos[order],
                chrom_names,
            ),
            order,
        )

    def chrom_labels(self) -> np.ndarray:
        return np.asarray(self.chrom_names, dtype=object)[self.chrom]

    def relative_pos(self) -> np.ndarray:
        """Positions rescaled to [0, 1] within each chromosome, ``(M,)`` float64.

        Makes position encodings independent of the unit (bp, cM or an ordinal).
        """
        out = np.zeros(len(self), dtype=np.float64)
        for c in range(len(self.chrom_names)):
            sel = self.chrom == c
            if sel.any():
                lo, hi = self.pos[sel].min(), self.pos[sel].max()
                out[sel] = (self.pos[sel] - lo) / (hi - lo) if hi > lo else 0.0
        return out

    def fingerprint(self) -> str:
        """Hash of names, chromosomes and positions (a model refuses another map)."""
        h = hashlib.sha256()
        for part in (self.names.astype(str), self.chrom_labels().astype(str)):
            h.update("\t".join(part.tolist()).encode())
        h.update(self.pos.astype(np.float64).tobytes())
        return h.hexdigest()[:16]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"chr": self.chrom_labels(), "marker": self.names, "pos": self.pos}
        )

    def subset(self, index: np.ndarray) -> MarkerMap:
        return MarkerMap(
            self.names[index], self.chrom[index], self.pos[index], self.chrom_names
        )


@dataclass
class Genotypes:
    """Unphased genotypes as allele ids, ``alleles`` of shape ``(N, M, P)``.

    Each locus holds ``P`` allele ids sorted ascending; ``MISSING`` (0) marks an
    uncalled copy. ``n_alleles`` counts real alleles (2 for biallelic SNPs).
    """

    alleles: np.ndarray  # (N, M, P) uint8
    names: np.ndarray  # (N,) str
    markers: MarkerMap
    n_alleles: int

    def __post_init__(self):
        if self.alleles.ndim != 3:
            raise ValueError(
                "alleles must be (individuals, markers, ploidy), "
                f"got {self.alleles.shape}"
            )
        if self.alleles.shape[0] != len(self.names) or self.alleles.shape[1] != len(
            self.markers
        ):
            raise ValueError("alleles shape does not match names / markers")

    @property
    def ploidy(self) -> int:
        return self.alleles.shape[2]

    @property
    def n_individuals(self) -> int:
        return self.alleles.shape[0]

    @property
    def n_markers(self) -> int:
        return self.alleles.shape[1]

    def fingerprint(self) -> str:
        """Hash of the names, the marker map, ``n_alleles`` and every allele id.

        A checkpoint records it so that a resume never continues a run on other
        data. Costs one pass over the alleles (about 1 s per GB).
        """
        h = hashlib.sha256()
        h.update("\t".join(self.names.astype(str).tolist()).encode())
        h.update(f"{self.markers.fingerprint()}:{self.n_alleles}".encode())
        h.update(self.content_digest().encode())
        return h.hexdigest()[:16]

    def content_digest(self) -> str:
        """Hash of the allele ids ``(N, M, P)`` (streamed stores override this)."""
        h = hashlib.sha256(str(self.alleles.shape).encode())
        for start in range(0, self.n_individuals, 256):
            h.update(np.ascontiguousarray(self.alleles[start : start + 256]).data)
        return h.hexdigest()

    def codes(self) -> np.ndarray:
        """Genotype codes ``(N, M)`` in the original tool's allele-set encoding."""
        return alleles_to_codes(self.alleles, self.n_alleles)

    @classmethod
    def from_dosages(
        cls, dosages, names, markers=None, ploidy: int = 2, chrom=None, pos=None
    ) -> Genotypes:
        """Biallelic genotypes from copies of the second allele.

        Parameters
        ----------
        dosages : array-like
            ``(N, M)`` copies of allele 2, whole numbers ``0..ploidy``; NaN or a
            negative value is missing.
        names : array-like
            ``(N,)`` individual names.
        markers : MarkerMap or array-like, optional
            The map, or ``(M,)`` marker names (default ``m1..mM``) placed by
            ``chrom`` ``(M,)`` (default one chromosome, ``unplaced``) and ``pos``
            ``(M,)`` (default the column order, 1..M).
        ploidy : int
            Copies per locus (1 for inbred lines scored 0/1).

        Examples
        --------
        >>> g = Genotypes.from_dosages([[0, 1, 2], [2, np.nan, 0]], ["a", "b"])
        >>> g.alleles[1].tolist(), g.markers.names.tolist()
        ([[2, 2], [0, 0], [1, 1]], ['m1', 'm2', 'm3'])
        """
        dosage = np.asarray(dosages, dtype=np.float64)
        if dosage.ndim != 2:
            raise ValueError(f"dosages must be (individuals, markers), {dosage.shape}")
        m = dosage.shape[1]
        known = np.isfinite(dosage) & (dosage >= 0)
        whole = np.where(known, dosage, 0)
        if (whole != np.round(whole)).any() or (whole > ploidy).any():
            raise ValueError(f"dosages must be whole numbers 0..{ploidy} or NaN")
        if not isinstance(markers, MarkerMap):
            labels = [f"m{j + 1}" for j in range(m)] if markers is None else markers
            markers, order = MarkerMap.from_columns(
                ["unplaced"] * m if chrom is None else chrom,
                labels,
                np.arange(1, m + 1) if pos is None else pos,
            )
            whole, known = whole[:, order], known[:, order]
        alleles = dosage_alleles(np.where(known, whole, -1), ploidy)
        return cls(alleles, np.asarray(names).astype(str), markers, n_alleles=2)

    def subset(self, individuals=None, markers=None) -> Genotypes:
        ind = slice(None) if individuals is None else np.asarray(individuals)
        mk = slice(None) if markers is None else np.asarray(markers)
        return Genotypes(
            self.alleles[ind][:, mk],
            self.names[ind],
            self.markers if markers is None else self.markers.subset(mk),
            self.n_alleles,
        )

    def index_of(self, names) -> np.ndarray:
        """Row index of each name (``-1`` where absent)."""
        lookup = {n: i for i, n in enumerate(self.names.tolist())}
        return np.array(
            [lookup.get(n, -1) for n in np.asarray(names).astype(str)], dtype=np.int64
        )

    def allele_counts(self, individuals=None, chunk: int = 4096) -> np.ndarray:
        """Called copies of each allele per marker, ``(M, A + 1)`` int64.

        Column 0 counts missing copies.
        """
        alleles = self.alleles if individuals is None else self.alleles[individuals]
        m, k = alleles.shape[1], self.n_alleles + 1
        counts = np.zeros((m, k), dtype=np.int64)
        offsets = (np.arange(m, dtype=np.int64) * k)[None, :, None]
        for start in range(0, alleles.shape[0], chunk):
            environment = alleles[start : start + chunk].astype(np.int64) + offsets
            counts += np.bincount(environment.ravel(), minlength=m * k).reshape(m, k)
        return counts

    def allele_frequencies(self, individuals=None) -> np.ndarray:
        """Frequency of each real allele among called copies, ``(M, A)`` float64.

        Markers with no called copy get equal frequencies.
        """
        counts = self.allele_counts(individuals)[:, 1:].astype(np.float64)
        total = counts.sum(1, keepdims=True)
        return np.where(total > 0, counts / np.maximum(total, 1), 1.0 / self.n_alleles)

    def dosages(
        self, frequencies: np.ndarray | None = None, individuals=None
    ) -> np.ndarray:
        """Copy counts per allele, missing copies filled with their expectation.

        Returns ``(N, M, A)`` float32: entry ``[i, m, a]`` is the number of copies of
        allele ``a + 1``; an uncalled copy adds ``frequencies[m, a]`` (mean imputation).
        """
        if frequencies is None:
            frequencies = self.allele_frequencies(individuals)
        alleles = self.alleles if individuals is None else self.alleles[individuals]
        n, m, _ = alleles.shape
        out = np.empty((n, m, self.n_alleles), dtype=np.float32)
        n_missing = (alleles == MISSING).sum(-1)
        for a in range(self.n_alleles):
            out[:, :, a] = (alleles == a + 1).sum(-1) + n_missing * frequencies[
                None, :, a
            ]
        return out

    def missing_rate(self) -> float:
        return float((self.alleles == MISSING).mean())

    def epoch_order(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Order in which a training epoch visits ``rows`` (a shuffle).

        Streamed genotypes override it to keep the rows of one read together.
        """
        return rng.permutation(rows)


@dataclass
class Phenotypes:
    """Long table of observations: ``name``, ``response``, ``block`` (+ ``cv``, extras).

    ``block`` is a non-negative integer environment index; ``cv`` (optional) a fold
    label. Extra columns are carried through to outputs untouched.
    ``environment_labels`` (optional) names each environment:
    ``environment_labels[b]`` is the text the input file gave environment ``b``
    (None: the blocks were integers there).
    """

    table: pd.DataFrame
    source: str = "phenotypes"
    extra_columns: list[str] = field(default_factory=list)
    environment_labels: list[str] | None = None

    def named_environments(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with its ``block`` codes replaced by their labels (unchanged
        without labels), for outputs.

        >>> p = Phenotypes(
        ...     pd.DataFrame({"block": [0]}), environment_labels=["2019_Obregon"]
        ... )
        >>> p.named_environments(pd.DataFrame({"block": [0, 0]}))["block"].tolist()
        ['2019_Obregon', '2019_Obregon']
        """
        if self.environment_labels is None or "block" not in frame:
            return frame
        labels = np.asarray(self.environment_labels, dtype=object)
        return frame.assign(block=labels[frame["block"].to_numpy(np.int64)])

    @property
    def has_cv(self) -> bool:
        return "cv" in self.table.columns

    @property
    def environments(self) -> np.ndarray:
        return np.sort(self.table["block"].unique())

    @property
    def n_environments(self) -> int:
        """Number of block slots a model needs (``max(block) + 1``)."""
        return int(self.table["block"].max()) + 1

    def folds(self) -> list[str]:
        """The distinct values of the ``cv`` column, in natural order."""
        if not self.has_cv:
            raise ValueError(
                f"{self.source}: no 'cv' column; add one to run cross-validation"
            )
        return sorted(self.table["cv"].astype(str).unique().tolist(), key=natural_key)

    def split(self, fold: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Rows for training (``cv != fold``) and validation (``cv == fold``)."""
        is_val = self.table["cv"].astype(str) == str(fold)
        return self.table[~is_val], self.table[is_val]


@dataclass
class EnvCovariates:
    """Environment covariates per block: static (``T = 1``) or a daily series.

    ``values`` ``(E, T, C)`` float64 holds, for block ``blocks[e]``, covariate ``c``
    at time ``times[t]`` (``times`` is None for static covariates). Every block of a
    series has the same time points. ``environment_labels`` (optional) names each row:
    the text the file gave block ``blocks[e]`` (None: the file numbered them).
    """

    environments: np.ndarray  # (E,) int64, ascending
    names: list[str]  # (C,) covariate names
    values: np.ndarray  # (E, T, C) float64
    times: np.ndarray | None = None  # (T,) float64, ascending; None: static
    source: str = "covariates"
    environment_labels: list[str] | None = None  # (E,) names, or None

    def __post_init__(self):
        if self.values.ndim != 3 or self.values.shape[0] != len(self.environments):
            raise ValueError("values must be (blocks, times, covariates)")
        if self.values.shape[2] != len(self.names):
            raise ValueError("values do not match the covariate names")

    @property
    def is_series(self) -> bool:
        return self.times is not None

    def index_of(self, environments) -> np.ndarray:
        """Row of each block in ``values`` (``-1`` where the block has none)."""
        lookup = {int(b): i for i, b in enumerate(self.environments.tolist())}
        return np.array([lookup.get(int(b), -1) for b in environments], dtype=np.int64)

    def summary(self, n_windows: int = 6) -> np.ndarray:
        """Means over ``n_windows`` equal time windows, ``(E, n_windows * C)``.

        Static covariates are returned as they are ``(E, C)``. Daily weather is
        noisy; window means (early, mid, late season, ...) keep the seasonal
        signal that drives interactions. Columns are window-major per covariate.
        """
        if not self.is_series:
            return self.values[:, 0]
        n_windows = min(n_windows, self.values.shape[1])
        windows = np.array_split(np.arange(self.values.shape[1]), n_windows)
        means = [self.values[:, w].mean(1) for w in windows]  # each (E, C)
        return np.stack(means, axis=2).reshape(len(self.environments), -1)


@dataclass
class MarkerGraph:
    """Directed edges between markers of a map: marker ``dst[e]`` reads ``src[e]``.

    ``weight`` (E,) float32 > 0 is the strength of the link (r² for LD, the file's
    weight otherwise); every marker also reads itself with weight 1, which is not
    stored. Edges are sorted by ``dst`` (then ``src``) and unique.
    """

    src: np.ndarray  # (E,) int64 marker index
    dst: np.ndarray  # (E,) int64 marker index
    weight: np.ndarray  # (E,) float32

    def __post_init__(self):
        order = np.lexsort((self.src, self.dst))
        self.src = np.asarray(self.src, dtype=np.int64)[order]
        self.dst = np.asarray(self.dst, dtype=np.int64)[order]
        self.weight = np.asarray(self.weight, dtype=np.float32)[order]

    def __len__(self) -> int:
        return len(self.src)

    def neighbours(self, marker: int) -> dict[int, float]:
        """Markers ``marker`` reads, with their weights."""
        sel = self.dst == marker
        return dict(zip(self.src[sel].tolist(), self.weight[sel].tolist(), strict=True))


@dataclass
class MarkerAnnotations:
    """Per-marker annotations aligned to a marker map (M rows).

    ``numeric`` (M, C) float64 holds numeric columns (NaN = missing);
    ``codes`` (M, K) int64 categorical columns as ``1..levels[k]`` (0 = missing),
    ``categories[k]`` the level names of column k in code order.
    """

    numeric_names: list[str]
    numeric: np.ndarray  # (M, C) float64
    categorical_names: list[str]
    codes: np.ndarray  # (M, K) int64
    categories: list[list[str]]

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.categories)

    def scaled(self) -> tuple[np.ndarray, np.ndarray]:
        """Numeric columns standardised over the markers that have a value, missing
        set to 0, ``(M, C)`` float32, and the missing flags ``(M, C)`` float32."""
        missing = np.isnan(self.numeric)
        mean, sd = np.nanmean(self.numeric, 0), np.nanstd(self.numeric, 0)
        z = (self.numeric - mean) / np.where(sd > 0, sd, 1.0)
        z[missing] = 0.0
        return z.astype(np.float32), missing.astype(np.float32)


@dataclass
class MarkerInputs:
    """What a model or a baseline may know about markers besides their positions,
    read from the files a command names (:func:`gperceiver.io.read_marker_inputs`);
    the library reads no such file itself. Each is None when not asked for."""

    weights: np.ndarray | None = None  # (M,) prior marker weights (additive path)
    graph: MarkerGraph | None = None  # an edge-list marker graph (not "ld")
    annotations: MarkerAnnotations | None = None


def genotype_batches(
    genotypes: Genotypes, rows, batch_size: int = 64, device=None
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """The one way genotype rows become model inputs: consecutive batches of
    ``rows`` (default: every individual) as ``(rows (B,), alleles (B, M, P) int64
    tensor on device)``, in the order of ``rows``.

    Examples
    --------
    >>> markers, _ = MarkerMap.from_columns(["1"], ["a"], [1])
    >>> g = Genotypes(np.array([[[1, 2]], [[2, 2]], [[1, 1]]], np.uint8),
    ...               np.array(["x", "y", "z"]), markers, 2)
    >>> [(rows.tolist(), tuple(a.shape)) for rows, a in genotype_batches(g, None, 2)]
    [([0, 1], (2, 1, 2)), ([2], (1, 1, 2))]
    """
    import torch  # here, so that the data model (and the baselines) load without it

    rows = np.arange(genotypes.n_individuals) if rows is None else np.asarray(rows)
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        alleles = torch.from_numpy(genotypes.alleles[part].astype(np.int64))
        yield part, alleles if device is None else alleles.to(device)
