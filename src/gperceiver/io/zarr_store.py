"""On-disk genotype store in the VCF Zarr layout (bio2zarr writes it, sgkit reads it).

A directory ``NAME.zarr`` (Zarr format 2, consolidated metadata) holding

- ``call_genotype`` ``(variants, samples, ploidy)`` int8: allele index (0 = REF),
  ``-1`` = missing copy; chunked ``(variant_chunk, sample_chunk, ploidy)``;
- ``variant_contig`` ``(variants,)`` index into ``contig_id``; ``variant_position``
  ``(variants,)`` int32 (POS, bp); ``variant_id``; ``variant_allele``
  ``(variants, alleles)`` (REF first, ``""`` pads); ``sample_id``;
- ``variant_MAPPOS`` ``(variants,)`` float64 when the positions are a cM map (as the
  VCF writer's ``INFO/MAPPOS``; ``variant_position`` then holds ranks).

:func:`write_zarr` streams variant blocks in, so a VCF or PLINK file converts with
memory bounded by one block. :class:`ZarrGenotypes` reads a store back as
:class:`Genotypes` whose ``alleles`` are fetched one block of samples at a time:
pretraining and prediction stream through it without loading the whole matrix.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..data import Genotypes, MarkerMap
from .atomic import sync_tree
from .errors import InputError
from .variants import VariantBlock, check_unique_ids

VCF_ZARR_VERSION = "0.4"
VARIANT_CHUNK = 10_000  # bio2zarr's default variant chunk
SAMPLE_CHUNK = 1_000  # bio2zarr's default sample chunk; one streamed block of samples
REQUIRED = ("call_genotype", "variant_contig", "contig_id", "variant_position")


def _compressor(genotypes: bool = False):
    import numcodecs

    shuffle = numcodecs.Blosc.BITSHUFFLE if genotypes else numcodecs.Blosc.SHUFFLE
    return numcodecs.Blosc(cname="zstd", clevel=7, shuffle=shuffle)


def _array(group, name, shape, dtype, chunks, dims, fill=None, genotypes=False):
    arr = group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        compressors=_compressor(genotypes),
        fill_value=fill,
    )
    arr.attrs["_ARRAY_DIMENSIONS"] = dims  # xarray / sgkit dimension names
    return arr


def write_zarr(
    blocks: Iterable[VariantBlock],
    samples,
    path,
    variant_chunk: int = VARIANT_CHUNK,
    sample_chunk: int = SAMPLE_CHUNK,
) -> int:
    """Write variant blocks (all but the last of ``variant_chunk`` variants) to a
    VCF Zarr store at ``path``; returns the number of variants.

    The store appears complete or not at all (written beside, then renamed).
    """
    import zarr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(samples, dtype=str)
    n = len(samples)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        group = zarr.open_group(staging, mode="w", zarr_format=2)
        group.attrs.update(
            {"vcf_zarr_version": VCF_ZARR_VERSION, "source": "gperceiver"}
        )
        ids_arr = _array(group, "sample_id", (n,), str, (sample_chunk,), ["samples"])
        ids_arr[:] = samples
        arrays: dict = {}
        contigs: dict[str, int] = {}
        map_positions, total = [], 0
        for block in blocks:
            v, stop = len(block), total + len(block)
            if not arrays:
                p, k = block.calls.shape[2], block.alleles.shape[1]
                vdims = ["variants"]
                arrays = {
                    "call_genotype": _array(
                        group,
                        "call_genotype",
                        (0, n, p),
                        "i1",
                        (variant_chunk, sample_chunk, p),
                        ["variants", "samples", "ploidy"],
                        fill=-1,
                        genotypes=True,
                    ),
                    "variant_contig": _array(
                        group, "variant_contig", (0,), "i2", (variant_chunk,), vdims, 0
                    ),
                    "variant_position": _array(
                        group,
                        "variant_position",
                        (0,),
                        "i4",
                        (variant_chunk,),
                        vdims,
                        0,
                    ),
                    "variant_id": _array(
                        group, "variant_id", (0,), str, (variant_chunk,), vdims
                    ),
                    "variant_allele": _array(
                        group,
                        "variant_allele",
                        (0, k),
                        str,
                        (variant_chunk, k),
                        ["variants", "alleles"],
                    ),
                }
            if block.calls.shape[2] != arrays["call_genotype"].shape[2]:
                raise ValueError("every block must have the same ploidy")
            k = max(arrays["variant_allele"].shape[1], block.alleles.shape[1])
            for name, arr in arrays.items():
                arr.resize(
                    (stop, k) if name == "variant_allele" else (stop,) + arr.shape[1:]
                )
            codes = [contigs.setdefault(str(c), len(contigs)) for c in block.contig]
            alleles = np.full((v, k), "", dtype=object)
            alleles[:, : block.alleles.shape[1]] = block.alleles
            arrays["call_genotype"][total:stop] = block.calls
            arrays["variant_contig"][total:stop] = np.asarray(codes, dtype=np.int16)
            arrays["variant_position"][total:stop] = block.position
            arrays["variant_id"][total:stop] = block.ids
            arrays["variant_allele"][total:stop] = alleles
            map_positions.append(block.map_position)
            total = stop
        if not arrays:
            raise ValueError("no variants to write")
        contig_arr = _array(
            group,
            "contig_id",
            (len(contigs),),
            str,
            (max(1, len(contigs)),),
            ["contigs"],
        )
        contig_arr[:] = np.asarray(list(contigs), dtype=str)
        map_position = np.concatenate(map_positions)
        if np.isfinite(map_position).all():
            mappos = _array(
                group, "variant_MAPPOS", (total,), "f8", (variant_chunk,), ["variants"]
            )
            mappos[:] = map_position
        zarr.consolidate_metadata(staging)
        sync_tree(staging)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(staging, path)
            shutil.rmtree(old)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return total


class StreamedAlleles:
    """Read-only ``(N, M, P)`` uint8 allele ids of a store, in marker-map order.

    Indexing by individuals (int, slice or index array first) reads the blocks of
    ``block_samples`` individuals that hold them; one decoded block is kept, so
    rows taken block by block cost one read per block.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, calls, store_to_map: np.ndarray, block_samples: int):
        self.calls = calls  # zarr array (V, N, P) int8
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
            part = self.calls[v0:v1, start:stop, :].astype(np.uint8)  # (V', S, P)
            part += 1  # -1 (missing) wraps to 0
            part.sort(axis=-1)
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


class ZarrGenotypes(Genotypes):
    """:class:`Genotypes` backed by a VCF Zarr store, streamed a block at a time.

    Memory: one block of ``block_samples`` x M x P bytes (default: the store's
    sample chunk) plus what the caller asks for.
    """

    def __init__(self, path, block_samples: int | None = None):
        group = open_store(path)
        calls = group["call_genotype"]
        self.path = Path(path)
        contig_names = _strings(group["contig_id"])
        contig = contig_names[group["variant_contig"][:]]
        pos = group["variant_position"][:].astype(np.float64)
        if "variant_MAPPOS" in group:
            pos = group["variant_MAPPOS"][:]
        v = calls.shape[0]
        ids = (
            _strings(group["variant_id"])
            if "variant_id" in group
            else np.array([f"{c}:{int(p)}" for c, p in zip(contig, pos, strict=True)])
        )
        check_unique_ids(ids, path)
        markers, order = MarkerMap.from_columns(contig, ids, pos)
        store_to_map = np.empty(v, dtype=np.int64)
        store_to_map[order] = np.arange(v)
        n_alleles = (
            group["variant_allele"].shape[1]
            if "variant_allele" in group
            else int(max(2, calls[:].max() + 1))
        )
        alleles = StreamedAlleles(calls, store_to_map, block_samples or calls.chunks[1])
        names = _strings(group["sample_id"])
        super().__init__(alleles, names, markers, n_alleles)

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


__all__ = ["StreamedAlleles", "ZarrGenotypes", "read_zarr", "write_zarr"]
