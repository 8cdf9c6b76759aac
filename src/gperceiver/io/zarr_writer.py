"""Writing VCF Zarr stores (specification 0.4) from variant blocks.

:func:`write_zarr` streams variant blocks in, so a VCF or PLINK file converts with
memory bounded by one block. The store holds what the specification defines for
the fixed fields and GT, so bio2zarr, vcztools and sgkit read it
(``vcztools view`` gives the records ``bcftools view`` gives of the source):

- ``call_genotype`` ``(variants, samples, ploidy)`` int8: allele index (0 = REF),
  ``-1`` missing copy, ``-2`` fill (a haploid call in a diploid file);
  ``call_genotype_mask`` (true where ``< 0``); ``call_genotype_phased``
  ``(variants, samples)``; chunked ``(variant_chunk, sample_chunk, ploidy)``;
- ``variant_contig`` (index into ``contig_id``, with ``contig_length``),
  ``variant_position`` int32 (POS, bp), ``variant_id`` (``.`` where the source had
  none) with ``variant_id_mask``, ``variant_allele`` ``(variants, alleles)`` (REF
  first, ``""`` pads), ``variant_quality`` float32 (the specification's missing
  NaN for ``.``), ``variant_filter`` ``(variants, filters)`` over ``filter_id``
  (``PASS`` first) and ``filter_description``; ``sample_id``; ``variant_length``
  (bases of REF) and ``region_index`` (per variant chunk and contig: chunk,
  contig, first and last POS, last end, records), which ``vcztools view -r``
  needs;
- ``variant_MAPPOS`` ``(variants,)`` float64 when the positions are a cM map (as
  the VCF writer's ``INFO/MAPPOS``; ``variant_position`` then holds ranks);
- group attributes ``vcf_zarr_version`` ``0.4``, ``source``,
  ``vcf_meta_information`` (the source's other ``##key=value`` lines) and
  ``vcf_header`` (the whole header text, for readers of specification 0.3 and
  earlier, where it was mandatory); xarray dimension names on every array;
  consolidated metadata, Zarr format 2.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .atomic import sync_tree
from .variants import VariantBlock, VariantHeader

VCF_ZARR_VERSION = "0.4"
VARIANT_CHUNK = 10_000  # bio2zarr's default variant chunk
SAMPLE_CHUNK = 1_000  # samples per chunk (bio2zarr's default is 10,000)
FLOAT32_MISSING = np.array([0x7F800001], dtype=np.int32).view(np.float32)[0]


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


def _variant_arrays(group, block: VariantBlock, n: int, vc: int, sc: int) -> dict:
    """The empty (0-variant) arrays of every per-variant field."""
    p, k = block.calls.shape[2], block.alleles.shape[1]
    calls = ["variants", "samples", "ploidy"]
    v = ["variants"]
    return {
        "call_genotype": _array(
            group, "call_genotype", (0, n, p), "i1", (vc, sc, p), calls, -1, True
        ),
        "call_genotype_mask": _array(
            group, "call_genotype_mask", (0, n, p), bool, (vc, sc, p), calls, True
        ),
        "call_genotype_phased": _array(
            group,
            "call_genotype_phased",
            (0, n),
            bool,
            (vc, sc),
            calls[:2],
            False,
            True,
        ),
        "variant_contig": _array(group, "variant_contig", (0,), "i2", (vc,), v, 0),
        "variant_position": _array(group, "variant_position", (0,), "i4", (vc,), v, 0),
        "variant_id": _array(group, "variant_id", (0,), str, (vc,), v),
        "variant_id_mask": _array(group, "variant_id_mask", (0,), bool, (vc,), v, 0),
        "variant_allele": _array(
            group, "variant_allele", (0, k), str, (vc, k), ["variants", "alleles"]
        ),
        "variant_quality": _array(
            group, "variant_quality", (0,), "f4", (vc,), v, FLOAT32_MISSING
        ),
        "variant_filter": _array(
            group, "variant_filter", (0, 1), bool, (vc, 1), ["variants", "filters"], 0
        ),
        "variant_length": _array(group, "variant_length", (0,), "i4", (vc,), v, 0),
    }


def _block_fields(block: VariantBlock, contigs: dict, k: int, f: int) -> dict:
    """A block's values for every array of :func:`_variant_arrays`."""
    v, n = block.calls.shape[:2]
    codes = [contigs.setdefault(str(c), len(contigs)) for c in block.contig]
    alleles = np.full((v, k), "", dtype=object)
    alleles[:, : block.alleles.shape[1]] = block.alleles
    missing_id = (
        np.zeros(v, bool) if block.id_missing is None else block.id_missing.copy()
    )
    ids = np.where(missing_id, ".", block.ids.astype(object))
    quality = np.full(v, FLOAT32_MISSING, np.float32)
    if block.quality is not None:
        called = np.isfinite(block.quality)
        quality[called] = block.quality[called]
    filters = np.zeros((v, f), bool)
    if block.filters is None:
        filters[:, 0] = True  # PASS
    else:
        filters[:, : block.filters.shape[1]] = block.filters
    phased = np.zeros((v, n), bool) if block.phased is None else block.phased
    return {
        "call_genotype": block.calls,
        "call_genotype_mask": block.calls < 0,
        "call_genotype_phased": phased,
        "variant_contig": np.asarray(codes, dtype=np.int16),
        "variant_position": block.position,
        "variant_id": ids,
        "variant_id_mask": missing_id,
        "variant_allele": alleles,
        "variant_quality": quality,
        "variant_filter": filters,
        "variant_length": np.char.str_len(block.alleles[:, 0].astype(str)),
    }


def _header_arrays(group, header: VariantHeader, contigs: dict, tops: dict) -> None:
    """``contig_id``/``contig_length``, ``filter_id``/``filter_description``."""
    lengths = dict(header.contigs)
    for name in contigs:
        if lengths.get(name) is None:
            lengths[name] = tops.get(name, 0)
    names = list(contigs)  # the header's, then those met in the records
    size = max(1, len(names))
    ids = _array(group, "contig_id", (len(names),), str, (size,), ["contigs"])
    ids[:] = np.asarray(names, dtype=str)
    length = _array(group, "contig_length", (len(names),), "i8", (size,), ["contigs"])
    length[:] = np.asarray([lengths[c] for c in names], dtype=np.int64)
    f = max(1, len(header.filters))
    fid = _array(group, "filter_id", (len(header.filters),), str, (f,), ["filters"])
    fid[:] = np.asarray([i for i, _ in header.filters], dtype=str)
    desc = _array(
        group, "filter_description", (len(header.filters),), str, (f,), ["filters"]
    )
    desc[:] = np.asarray([d for _, d in header.filters], dtype=str)


def _region_index(group, variant_chunk: int) -> None:
    """The specification's region index: one row per variant chunk and contig."""
    contig = group["variant_contig"][:].astype(np.int64)
    start = group["variant_position"][:].astype(np.int64)
    end = start + np.maximum(group["variant_length"][:], 1) - 1
    chunk = np.arange(len(contig)) // variant_chunk
    rows = []
    for c in np.unique(chunk):
        in_chunk = chunk == c
        for k in dict.fromkeys(contig[in_chunk].tolist()):
            sel = in_chunk & (contig == k)
            rows.append(
                [c, k, start[sel].min(), start[sel].max(), end[sel].max(), sel.sum()]
            )
    table = np.array(rows, dtype=np.int32)
    dims = ["region_index_values", "region_index_fields"]
    index = _array(group, "region_index", table.shape, "i4", table.shape, dims)
    index[:] = table


def _header_text(header: VariantHeader, contigs: dict, samples, source: str) -> str:
    from .vcf_writer import _header_lines

    lines = _header_lines(header, contigs, samples, source)
    return "\n".join(lines) + "\n"


def _append_blocks(group, blocks, header, contigs, n, variant_chunk, sample_chunk):
    """Append every block to the variant arrays of ``group`` (created from the
    first block, widened as alleles or filters grow). Returns the arrays, each
    contig's largest position and the (V,) map positions in cM (NaN: none)."""
    arrays: dict = {}
    tops: dict[str, int] = {}
    map_positions, total = [], 0
    for block in blocks:
        if not arrays:
            arrays = _variant_arrays(group, block, n, variant_chunk, sample_chunk)
        if block.calls.shape[2] != arrays["call_genotype"].shape[2]:
            raise ValueError("every block must have the same ploidy")
        stop = total + len(block)
        k = max(arrays["variant_allele"].shape[1], block.alleles.shape[1])
        f = max(
            len(header.filters),
            0 if block.filters is None else block.filters.shape[1],
        )
        widths = {"variant_allele": k, "variant_filter": f}
        for name, arr in arrays.items():
            arr.resize(
                (stop, widths[name]) if name in widths else (stop,) + arr.shape[1:]
            )
        for name, values in _block_fields(block, contigs, k, f).items():
            arrays[name][total:stop] = values
        for name in dict.fromkeys(block.contig.tolist()):
            top = int(block.position[block.contig == name].max())
            tops[name] = max(tops.get(name, 0), top)
        map_positions.append(block.map_position)
        total = stop
    if not arrays:
        raise ValueError("no variants to write")
    return arrays, tops, np.concatenate(map_positions)


def _replace(path: Path, staging: Path) -> None:
    """Rename the finished ``staging`` store to ``path``, replacing a whole old one."""
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, old / path.name)
        os.replace(staging, path)
        shutil.rmtree(old)
    else:
        os.replace(staging, path)


def write_zarr(
    blocks: Iterable[VariantBlock],
    samples,
    path,
    variant_chunk: int = VARIANT_CHUNK,
    sample_chunk: int = SAMPLE_CHUNK,
    header: VariantHeader | None = None,
    source: str = "gperceiver",
) -> int:
    """Write variant blocks (all but the last of ``variant_chunk`` variants) to a
    VCF Zarr store at ``path``; returns the number of variants.

    The store appears complete or not at all (written beside, then renamed).
    """
    import zarr

    header = header or VariantHeader()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(samples, dtype=str)
    n = len(samples)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        group = zarr.open_group(staging, mode="w", zarr_format=2)
        ids_arr = _array(group, "sample_id", (n,), str, (sample_chunk,), ["samples"])
        ids_arr[:] = samples
        contigs = {name: i for i, (name, _) in enumerate(header.contigs)}
        arrays, tops, map_position = _append_blocks(
            group, blocks, header, contigs, n, variant_chunk, sample_chunk
        )
        total = len(map_position)
        while len(header.filters) < arrays["variant_filter"].shape[1]:
            header.filters.append((f"filter{len(header.filters)}", ""))
        _header_arrays(group, header, contigs, tops)
        _region_index(group, variant_chunk)
        if np.isfinite(map_position).all():
            mappos = _array(
                group, "variant_MAPPOS", (total,), "f8", (variant_chunk,), ["variants"]
            )
            mappos[:] = map_position
        group.attrs.update(
            {
                "vcf_zarr_version": VCF_ZARR_VERSION,
                "source": source,
                "vcf_meta_information": [
                    [k, v] for k, v in header.meta if k not in ("source",)
                ],
                "vcf_header": _header_text(header, tops, samples, source),
            }
        )
        zarr.consolidate_metadata(staging)
        sync_tree(staging)  # mkdir's modes (not mkdtemp's 0o700), flushed to disk
        _replace(path, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return total
