"""Readers and writers for the tab-separated input tables.

- chroms: ``chr, marker, pos`` — one row per marker;
- markers: ``name`` + one column per marker holding allele-set codes
  (see :func:`gperceiver.data.allele_decoder`);
- dosages: ``name`` + one column per marker holding copies of the second allele
  (``0..ploidy``; empty, ``NA`` or ``.`` = missing);

and the helpers the other table modules share. Phenotype and covariate tables are
read in :mod:`~gperceiver.io.trial_tables`; per-marker files (graph, annotations,
weights) in :mod:`~gperceiver.io.marker_files`.

Every reader validates its file completely before returning; problems raise
:class:`InputError` naming the file, the line/column and the fix. Line numbers are
1-based and count the header as line 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data import (
    Genotypes,
    MarkerMap,
    allele_decoder,
    dosage_alleles,
    smallest_uint,
)
from .atomic import atomic_path
from .errors import InputError

MISSING_TOKENS = {b"", b"NA", b"na", b"NaN", b"nan", b"."}
NA_TEXT = ["", "NA", "na", "NaN", "nan"]


def open_lines(path) -> tuple[list[str], object]:
    """Header fields and an iterator over the remaining raw lines (bytes)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "file not found", "check the path")
    handle = open(path, "rb")
    header = handle.readline()
    if not header.strip():
        handle.close()
        raise InputError(path, "line 1", "file is empty", "write a header line first")
    fields = header.rstrip(b"\r\n").decode().split("\t")
    return fields, handle


def read_small_table(path, required: list[str], what: str) -> pd.DataFrame:
    """Read a narrow TSV as strings; ``required`` columns must lead the header."""
    fields, handle = open_lines(path)
    handle.close()
    if fields[: len(required)] != required:
        raise InputError(
            path,
            "line 1",
            f"header is {fields[: len(required) + 1]}, expected the {what} columns "
            f"{required} first",
            f"rename the columns to {', '.join(required)}",
        )
    dup = pd.Index(fields)[pd.Index(fields).duplicated()]
    if len(dup):
        raise InputError(
            path, "line 1", f"column {dup[0]!r} appears twice", "rename it"
        )
    try:
        table = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, na_filter=False
        )
    except pd.errors.ParserError as err:
        raise InputError(
            path, None, f"rows have a different number of fields ({err})", "fix them"
        ) from None
    if table.empty:
        raise InputError(path, "line 2", "no data rows", f"add at least one {what} row")
    return table


def check_unique(path, values: pd.Series, column: str, what: str) -> None:
    dup = values.duplicated(keep="first")
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        first = int(np.flatnonzero((values == values.iloc[row]).to_numpy())[0])
        raise InputError(
            path,
            f"line {row + 2}, column {column!r}",
            f"duplicate {what} {values.iloc[row]!r} (first on line {first + 2})",
            f"give every {what} a unique name",
        )


def numeric_column(path, table: pd.DataFrame, column: str, fix: str) -> np.ndarray:
    """Column as float64; NA spellings become nan, other text raises."""
    raw = table[column].str.strip()
    values = pd.to_numeric(raw.where(~raw.isin(NA_TEXT)), errors="coerce")
    bad = values.isna() & ~raw.isin(NA_TEXT)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            path,
            f"line {row + 2}, column {column!r}",
            f"{raw.iloc[row]!r} is not a number",
            fix,
        )
    return values.to_numpy(dtype=np.float64)


def read_chroms(path) -> MarkerMap:
    """Read a chroms table ``chr, marker, pos`` into a sorted :class:`MarkerMap`."""
    table = read_small_table(path, ["chr", "marker", "pos"], "chroms")
    check_unique(path, table["marker"], "marker", "marker")
    pos = numeric_column(path, table, "pos", "positions must be numbers (bp or cM)")
    if np.isnan(pos).any():
        row = int(np.flatnonzero(np.isnan(pos))[0])
        raise InputError(
            path,
            f"line {row + 2}, column 'pos'",
            "position is missing",
            "give every marker a position (use the column order if unknown)",
        )
    markers, _ = MarkerMap.from_columns(table["chr"], table["marker"], pos)
    return markers


def _parse_int_line(rest: bytes, n_fields: int, allow_missing: bool):
    """Parse ``n_fields`` tab-separated non-negative integers, ``(n_fields,)`` int64.

    Returns ``(values, None)`` or ``(None, (column_index, token, reason))`` for the
    first bad field. Missing tokens become -1 when ``allow_missing``.
    """
    b = np.frombuffer(rest, dtype=np.uint8)
    if len(b) == 2 * n_fields - 1:  # fast path: single-digit values
        values = b[0::2].astype(np.int64) - 48
        if (b[1::2] == 9).all() and (values >= 0).all() and (values <= 9).all():
            return values, None
    is_tab = b == 9
    tabs = np.flatnonzero(is_tab)
    if len(tabs) + 1 != n_fields:
        return None, (len(tabs) + 1, None, "ragged")
    ends = np.append(tabs, len(b))
    starts = np.insert(tabs + 1, 0, 0)
    lengths = ends - starts
    digits = b - np.uint8(48)
    is_digit = digits < 10
    if (is_digit | is_tab).all() and lengths.min() > 0 and lengths.max() <= 9:
        token = np.cumsum(is_tab)
        power = ends[token] - np.arange(len(b)) - 1
        weights = np.where(is_digit, digits * 10.0**power, 0.0)
        return np.bincount(token, weights=weights, minlength=n_fields).astype(
            np.int64
        ), None
    # slow path: per-token check, to find missing tokens or the first bad one
    tokens = rest.split(b"\t")
    values = np.empty(n_fields, dtype=np.int64)
    for j, tok in enumerate(tokens):
        t = tok.strip()
        if t.isdigit() and len(t) <= 9:
            values[j] = int(t)
        elif allow_missing and t in MISSING_TOKENS:
            values[j] = -1
        else:
            reason = "empty" if not t else "not a non-negative integer"
            return None, (j, tok.decode(errors="replace"), reason)
    return values, None


def _read_wide_integers(path, markers: MarkerMap, allow_missing: bool, what: str):
    """Read ``name`` + marker columns of integers, reordered to ``markers``.

    Returns individual names ``(N,)`` and values ``(N, M)`` int64 (-1 = missing).
    """
    fields, handle = open_lines(path)
    with handle:
        if fields[0] != "name":
            raise InputError(
                path,
                "line 1, column 1",
                f"first column is {fields[0]!r}, expected 'name'",
                "name the individual column 'name'",
            )
        columns = pd.Index(fields[1:])
        if columns.duplicated().any():
            col = columns[columns.duplicated()][0]
            raise InputError(
                path, "line 1", f"marker {col!r} appears twice", "remove the copy"
            )
        unknown = columns.difference(pd.Index(markers.names), sort=False)
        if len(unknown):
            raise InputError(
                path,
                f"line 1, column {columns.get_loc(unknown[0]) + 2}",
                f"{len(unknown)} marker(s) absent from the chroms table, "
                f"e.g. {unknown[0]!r}",
                "add them to the chroms file or drop these columns",
            )
        absent = pd.Index(markers.names).difference(columns, sort=False)
        if len(absent):
            raise InputError(
                path,
                "line 1",
                f"{len(absent)} marker(s) of the chroms table have no column, "
                f"e.g. {absent[0]!r}",
                "add the columns or remove those markers from the chroms file",
            )
        order = columns.get_indexer(markers.names)  # file column of each map marker
        n_fields = len(columns)
        names, rows = [], []
        for line_no, raw in enumerate(handle, start=2):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            name, _, rest = line.partition(b"\t")
            values, problem = _parse_int_line(rest, n_fields, allow_missing)
            if problem is not None:
                col, token, reason = problem
                if reason == "ragged":
                    raise InputError(
                        path,
                        f"line {line_no}",
                        f"{col + 1} fields, the header has {n_fields + 1}",
                        "give every row one value per header column",
                    )
                raise InputError(
                    path,
                    f"line {line_no}, column {fields[col + 1]!r}",
                    f"{what} {token!r} is {reason}",
                    "use integer codes"
                    + (" or NA for missing" if allow_missing else ""),
                )
            names.append(name.decode())
            rows.append(values[order])
    if not rows:
        raise InputError(path, "line 2", "no data rows", "add one row per individual")
    names = pd.Series(names)
    dup = names.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(
            path,
            f"line {row + 2}, column 'name'",
            f"duplicate individual {names.iloc[row]!r}",
            "give every individual a unique name or merge the rows",
        )
    return names.to_numpy(dtype=str), np.stack(rows)


def read_markers(
    path, markers: MarkerMap, ploidy: int = 2, n_alleles: int = 2
) -> Genotypes:
    """Read a markers table of allele-set codes into :class:`Genotypes`.

    ``ploidy`` and ``n_alleles`` (real alleles, 2 for SNPs) fix the code table.
    """
    names, codes = _read_wide_integers(path, markers, allow_missing=False, what="code")
    decoder = allele_decoder(ploidy, n_alleles)
    too_big = codes >= len(decoder)
    if too_big.any():
        i, m = np.argwhere(too_big)[0]
        raise InputError(
            path,
            f"line {i + 2}, column {str(markers.names[m])!r}",
            f"code {codes[i, m]} is outside 0..{len(decoder) - 1} for ploidy {ploidy} "
            f"with {n_alleles} alleles",
            "set --ploidy / --n-alleles to match the file",
        )
    codes = codes.astype(smallest_uint(len(decoder) - 1))
    return Genotypes(decoder[codes], names, markers, n_alleles)


def read_dosages(path, markers: MarkerMap, ploidy: int = 2) -> Genotypes:
    """Read a dosage table (copies of allele 2, ``0..ploidy``), biallelic."""
    names, dosage = _read_wide_integers(
        path, markers, allow_missing=True, what="dosage"
    )
    too_big = dosage > ploidy
    if too_big.any():
        i, m = np.argwhere(too_big)[0]
        raise InputError(
            path,
            f"line {i + 2}, column {str(markers.names[m])!r}",
            f"dosage {dosage[i, m]} is above the ploidy {ploidy}",
            "set --ploidy to match the file",
        )
    return Genotypes(dosage_alleles(dosage, ploidy), names, markers, n_alleles=2)


def write_table(frame: pd.DataFrame, path, float_format: str = "%.6g") -> None:
    """Write a TSV atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format=float_format, na_rep="NA")


def exact_number(value: float) -> str:
    """The shortest text that reads back as exactly ``value`` (float64).

    Whole numbers below 2**53 are written without a decimal point (bp positions
    stay ``1234``); others use Python's shortest round-trip repr (``0.117509935``,
    ``1.000000001``, ``1e-09``), so a written map always reads back bit-identical.

    >>> [exact_number(v) for v in (1234.0, 0.117509935, 1 + 1e-9, -0.0)]
    ['1234', '0.117509935', '1.000000001', '-0.0']
    """
    value = float(value)
    if (
        value.is_integer()
        and abs(value) < 2**53
        and not (value == 0 and np.signbit(value))
    ):
        return str(int(value))
    return repr(value)


def write_chroms(markers: MarkerMap, path) -> None:
    """Write ``chr, marker, pos``; positions read back bit-identical."""
    frame = markers.to_frame()
    frame["pos"] = [exact_number(v) for v in markers.pos.tolist()]
    write_table(frame, path)


def _write_wide(
    names, values: np.ndarray, columns, path, missing: int | None = None
) -> None:
    """Write ``name`` + integer columns fast (no wide DataFrame); ``missing`` -> NA."""
    single_digit = values.size and values.min() >= 0 and values.max() <= 9
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(("\t".join(["name", *columns]) + "\n").encode())
        for name, row in zip(names, values, strict=True):
            if single_digit:
                line = np.full(2 * len(row), 9, dtype=np.uint8)
                line[0::2] = row + 48
                line[-1] = 10
                text = line.tobytes()
            else:
                fields = [str(v) for v in row.tolist()]
                if missing is not None:
                    fields = ["NA" if v == str(missing) else v for v in fields]
                text = ("\t".join(fields) + "\n").encode()
            out.write(name.encode() + b"\t" + text)


def write_markers(genotypes: Genotypes, path) -> None:
    """Write allele-set codes (readable with the same ploidy and ``n_alleles``)."""
    _write_wide(genotypes.names, genotypes.codes(), genotypes.markers.names, path)


def write_dosages(genotypes: Genotypes, path) -> None:
    """Write copies of allele 2 per locus; any missing copy makes the locus NA."""
    if genotypes.n_alleles != 2:
        raise ValueError("dosage tables hold biallelic markers only")
    dosage = (genotypes.alleles == 2).sum(-1).astype(np.int64)
    dosage[(genotypes.alleles == 0).any(-1)] = -1
    _write_wide(genotypes.names, dosage, genotypes.markers.names, path, missing=-1)
