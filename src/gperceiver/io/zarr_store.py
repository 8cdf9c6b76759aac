"""Reading VCF Zarr stores: ours (:mod:`.zarr_writer`) and bio2zarr's.

:class:`ZarrGenotypes` reads a store as :class:`Genotypes` whose ``alleles`` are
fetched one block of samples at a time, the block sized by a memory budget
(``block_bytes``, default 512 MiB of decoded alleles), not by the store's chunks:
pretraining and prediction stream through it without loading the whole matrix.
:class:`ZarrSource` yields a store's variant blocks (REF/ALT, IDs, QUAL, FILTER,
phase) for conversions.

Read as the VCF reader reads the same file: markers are named by ``variant_id``,
or ``chrom:pos:REF:ALT`` where it is ``.`` or empty or ``variant_id_mask`` is set;
``-1`` is a missing copy; ``-2`` (fill, a call with fewer copies than the store's
ploidy) follows :func:`variants.allele_ids`: a haploid call is homozygous.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..data import Genotypes, MarkerMap
from .errors import InputError
from .variants import (
    VariantBlock,
    VariantHeader,
    allele_ids,
    check_unique_ids,
    marker_name,
)
from .zarr_writer import SAMPLE_CHUNK, VARIANT_CHUNK, VCF_ZARR_VERSION, write_zarr

REQUIRED = ("call_genotype", "variant_contig", "contig_id", "variant_position")
BLOCK_BYTES = 512 << 20  # decoded alleles held per streamed block (512 MiB)


class StreamedAlleles:
    """Read-only ``(N, M, P)`` uint8 allele ids of a store, in marker-map order.

    Indexing by individuals (int, slice or index array first) reads the blocks of
    ``block_samples`` individuals that hold them; one decoded block is kept, so
    rows taken block by block cost one read per block.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, calls, store_to_map: np.ndarray, block_samples: int, path=""):
        self.calls = calls  # zarr array (V, N, P) int8
        self.path = path  # names the store in an error
        v, n, p = calls.shape
        self.shape = (n, v, p)
        self.store_to_map = store_to_map  # (V,) marker-map index of store variant i
        self.identity = bool((store_to_map == np.arange(v)).all())
        self.block_samples = block_samples
        self._cached: tuple[int, np.ndarray] | None = None
        self.blocks_read = 0  # for tests and benchmarks

    def __len__(self) -> int:
        return self.shape[0]

    def block(self, index: int) -> np.ndarray:
        """Allele ids ``(S, M, P)`` of the ``index``-th block of S individuals."""
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        self._cached = None  # free the previous block before reading the next
        n, m, p = self.shape
        start = index * self.block_samples
        stop = min(start + self.block_samples, n)
        out = np.empty((stop - start, m, p), dtype=np.uint8)
        step = self.calls.chunks[0]
        for v0 in range(0, m, step):
            v1 = min(v0 + step, m)
            with decoding(self.path, f"call_genotype, variants {v0 + 1}-{v1}"):
                calls = self.calls[v0:v1, start:stop, :]
            part = allele_ids(calls, self.path, v0, start)
            where = slice(v0, v1) if self.identity else self.store_to_map[v0:v1]
            out[:, where, :] = part.transpose(1, 0, 2)
        self._cached = (index, out)
        self.blocks_read += 1
        return out

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        scalar = np.ndim(rows) == 0 and not isinstance(rows, slice)
        rows = np.atleast_1d(np.arange(self.shape[0])[rows])
        out = np.empty((len(rows),) + self.shape[1:], dtype=np.uint8)
        block_of = rows // self.block_samples
        blocks = list(dict.fromkeys(block_of.tolist()))
        if self._cached is not None and self._cached[0] in blocks:
            blocks.remove(self._cached[0])
            blocks.insert(0, self._cached[0])  # the block in memory first
        for b in blocks:
            sel = block_of == b
            out[sel] = self.block(b)[rows[sel] - b * self.block_samples]
        if scalar:
            out = out[0]
        return out[(slice(None),) * (not scalar) + rest] if rest else out


def block_size(n_variants: int, ploidy: int, block_bytes: int) -> int:
    """Samples per streamed block: as many as ``block_bytes`` of alleles hold."""
    return max(1, int(block_bytes) // max(1, n_variants * ploidy))


class ZarrGenotypes(Genotypes):
    """:class:`Genotypes` backed by a VCF Zarr store, streamed a block at a time.

    Memory: one block of ``block_samples`` x M x P bytes, by default as many
    samples as ``block_bytes`` hold (at least one), plus what the caller asks for.
    Where the store's sample chunk is larger than a block, each block decodes the
    chunks it overlaps (time, not memory); chunks of at most a block's samples
    (``vcf2zarr convert -w``) are read once per pass.
    """

    def __init__(
        self, path, block_samples: int | None = None, block_bytes: int = BLOCK_BYTES
    ):
        with decoding(path, "its variant and sample arrays"):
            self._open(path, block_samples, block_bytes)

    def _open(self, path, block_samples: int | None, block_bytes: int) -> None:
        group = open_store(path)
        calls = group["call_genotype"]
        self.path = Path(path)
        v, _, p = calls.shape
        contig, position, ids, _, alleles = variant_names(group, path)
        pos = position.astype(np.float64)
        if "variant_MAPPOS" in group:
            pos = group["variant_MAPPOS"][:]
        check_unique_ids(ids, path)
        markers, order = MarkerMap.from_columns(contig, ids, pos)
        store_to_map = np.empty(v, dtype=np.int64)
        store_to_map[order] = np.arange(v)
        n_alleles = (
            int((alleles != "").sum(1).max())
            if alleles is not None
            else int(max(2, calls[:].max() + 1))
        )
        size = block_samples or block_size(v, p, block_bytes)
        streamed = StreamedAlleles(calls, store_to_map, size, self.path)
        names = _strings(group["sample_id"])
        super().__init__(streamed, names, markers, n_alleles)
        self.map_to_store = order  # (M,) store variant of each map marker

    def marker_block(self, lo: int, hi: int) -> Genotypes:
        """Every individual on the map's markers ``lo:hi`` as plain
        :class:`Genotypes`, read from the variant chunks that hold them (memory
        N x (hi - lo) x P bytes, plus the chunks being decoded)."""
        index = self.map_to_store[lo:hi]
        calls = self.alleles.calls
        with decoding(self.path, f"call_genotype, markers {lo + 1}-{hi}"):
            if len(index) and (np.diff(index) == 1).all():
                part = calls[int(index[0]) : int(index[-1]) + 1]
            else:
                ordered = np.sort(index)
                part = calls.get_orthogonal_selection((ordered, slice(None)))
                part = part[np.searchsorted(ordered, index)]
        first = int(index.min()) if len(index) else 0
        alleles = allele_ids(part, self.path, first, 0).transpose(1, 0, 2)
        markers = self.markers.subset(np.arange(lo, hi))
        return Genotypes(
            np.ascontiguousarray(alleles), self.names, markers, self.n_alleles
        )

    def content_digest(self) -> str:
        """Hash of the store's files (relative path, size, modification time).

        Reading every call to hash it would cost a full pass over the store; any
        rewrite of the store changes a size or a time, which is what a resume
        must notice.
        """
        h = hashlib.sha256(str(self.alleles.shape).encode())
        for path in sorted(self.path.rglob("*")):
            if path.is_file():
                stat = path.stat()
                rel = path.relative_to(self.path).as_posix()
                h.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def epoch_order(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Shuffled ``rows``, each block of samples kept together, blocks shuffled."""
        size = self.alleles.block_samples
        blocks = np.unique(rows // size)
        if len(blocks) <= 1:
            return rng.permutation(rows)  # as in memory
        parts = [
            rng.permutation(rows[rows // size == b]) for b in rng.permutation(blocks)
        ]
        return np.concatenate(parts) if parts else rows[:0]

    def allele_counts(self, individuals=None, chunk: int = 0) -> np.ndarray:
        """Called copies of each allele per marker, ``(M, A + 1)``; read block-wise."""
        n, m, p = self.alleles.shape
        rows = np.arange(n) if individuals is None else np.sort(np.asarray(individuals))
        k = self.n_alleles + 1
        counts = np.zeros((m, k), dtype=np.int64)
        offsets = (np.arange(m, dtype=np.int64) * k)[None, :, None]
        step = max(1, (1 << 22) // max(1, m * p))  # ~32 MB of int64 per step
        for start in range(0, len(rows), step):
            part = self.alleles[rows[start : start + step]].astype(np.int64) + offsets
            counts += np.bincount(part.ravel(), minlength=m * k).reshape(m, k)
        return counts

    # whole-matrix statistics load the store (GBLUP and friends need it all anyway)
    def codes(self) -> np.ndarray:
        return self.load().codes()

    def dosages(self, frequencies=None, individuals=None) -> np.ndarray:
        return self.load().dosages(frequencies, individuals)

    def missing_rate(self) -> float:
        return self.load().missing_rate()

    def load(self) -> Genotypes:
        """Every genotype in memory as plain :class:`Genotypes`."""
        alleles = self.alleles[:]
        return Genotypes(alleles, self.names, self.markers, self.n_alleles)


def _strings(array) -> np.ndarray:
    """A zarr string array as a fixed-width numpy ``str`` array."""
    return np.array(array[:].tolist(), dtype=str)


def variant_names(group, path):
    """Contig labels, POS, marker names, whether each name was made up, and alleles
    ``(V, K)`` (None where the store has none) of a store.

    A variant whose ``variant_id`` is ``.`` or empty, or masked by
    ``variant_id_mask``, is named ``chrom:pos:REF:ALT`` as the VCF reader names it.
    """
    contig = _strings(group["contig_id"])[group["variant_contig"][:]]
    position = group["variant_position"][:].astype(np.int64)
    alleles = _strings(group["variant_allele"]) if "variant_allele" in group else None
    v = len(position)
    ids = _strings(group["variant_id"]) if "variant_id" in group else None
    missing = np.ones(v, bool) if ids is None else np.isin(ids, [".", ""])
    if "variant_id_mask" in group:
        missing |= group["variant_id_mask"][:].astype(bool)
    names = np.empty(v, dtype=object) if ids is None else ids.astype(object)
    for i in np.flatnonzero(missing):
        sequence = [] if alleles is None else [a for a in alleles[i] if a]
        names[i] = (
            marker_name(contig[i], position[i], sequence)
            if sequence
            else f"{contig[i]}:{position[i]}"
        )
    return contig, position, names.astype(str), missing, alleles


class ZarrSource:
    """A store's variant blocks in store order, for conversions (keeps REF/ALT,
    IDs, QUAL, FILTER and phase); ``header`` holds its contigs, filters and meta."""

    def __init__(self, path):
        self.path = Path(path)
        self.group = group = open_store(path)
        self.samples = _strings(group["sample_id"])
        contig, position, ids, missing, alleles = variant_names(group, path)
        check_unique_ids(ids, path)
        if alleles is None:  # no sequence stored: placeholders, as for tables
            from .vcf_writer import placeholder_alleles

            count = max(2, int(group["call_genotype"][:].max()) + 1)
            alleles = np.tile(np.array(placeholder_alleles(count)), (len(ids), 1))
        self.variants = (contig, position, ids, missing, alleles)
        names = _strings(group["contig_id"]).tolist()
        lengths = (
            group["contig_length"][:].tolist()
            if "contig_length" in group
            else [None] * len(names)
        )
        filters = [("PASS", "All filters passed")]
        if "filter_id" in group:
            fid = _strings(group["filter_id"]).tolist()
            desc = (
                _strings(group["filter_description"]).tolist()
                if "filter_description" in group
                else [""] * len(fid)
            )
            filters = list(zip(fid, desc, strict=True))
        meta = [tuple(kv) for kv in group.attrs.get("vcf_meta_information", [])]
        self.header = VariantHeader(
            list(zip(names, lengths, strict=True)), filters, meta
        )

    def blocks(self, block_bytes: int = BLOCK_BYTES) -> Iterator[VariantBlock]:
        """Blocks of all samples and at most a variant chunk of variants, as many
        as ``block_bytes`` of calls hold (at least one)."""
        g = self.group
        calls = g["call_genotype"]
        contig, position, ids, missing, alleles = self.variants
        v, n, p = calls.shape
        step = min(calls.chunks[0], max(1, int(block_bytes) // max(1, n * p)))
        mappos = g["variant_MAPPOS"][:] if "variant_MAPPOS" in g else np.full(v, np.nan)
        for v0 in range(0, v, step):
            part = slice(v0, min(v0 + step, v))
            yield VariantBlock(
                contig[part],
                position[part],
                mappos[part],
                ids[part],
                alleles[part],
                calls[part],
                id_missing=missing[part],
                phased=_part(g, "call_genotype_phased", part),
                quality=_part(g, "variant_quality", part),
                filters=_part(g, "variant_filter", part),
            )


def _part(group, name: str, part: slice):
    return group[name][part] if name in group else None


@contextmanager
def decoding(path, what: str):
    """A store whose chunks cannot be read or decoded (damaged, truncated, another
    codec) is refused in one line, not with zarr's or the codec's traceback."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:  # zarr and numcodecs raise many types
        detail = (str(err).splitlines() or [""])[0]
        raise InputError(
            path,
            what,
            f"cannot be read ({type(err).__name__}: {detail})",
            "rewrite the store with gperceiver convert or bio2zarr",
        ) from None


def open_store(path):
    """Open a VCF Zarr store read-only, checking the arrays gperceiver needs."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such store", "check the path")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as err:  # zarr raises several types for non-stores
        raise InputError(
            path, None, f"not a Zarr group ({err})", "give a VCF Zarr directory"
        ) from None
    absent = [name for name in (*REQUIRED, "sample_id") if name not in group]
    if absent:
        raise InputError(
            path,
            None,
            f"no {absent[0]!r} array: not a VCF Zarr store",
            "convert the data with gperceiver convert or bio2zarr",
        )
    calls = group["call_genotype"]
    if calls.ndim != 3 or calls.dtype != np.int8:
        raise InputError(
            path,
            "call_genotype",
            f"shape {calls.shape} dtype {calls.dtype}, expected 3-d int8",
            "store (variants, samples, ploidy) int8 allele indices",
        )
    return group


def read_zarr(path) -> Genotypes:
    """Read a whole VCF Zarr store into memory."""
    return ZarrGenotypes(path).load()


__all__ = [
    "BLOCK_BYTES",
    "SAMPLE_CHUNK",
    "VARIANT_CHUNK",
    "VCF_ZARR_VERSION",
    "StreamedAlleles",
    "ZarrGenotypes",
    "ZarrSource",
    "read_zarr",
    "write_zarr",
]
