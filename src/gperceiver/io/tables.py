"""Readers and writers for the tab-separated input tables.

- chroms: ``chr, marker, pos`` — one row per marker;
- markers: ``name`` + one column per marker holding allele-set codes
  (see :func:`gperceiver.data.allele_decoder`);
- dosages: ``name`` + one column per marker holding copies of the second allele
  (``0..ploidy``; empty, ``NA`` or ``.`` = missing);
- phenotypes: ``name, response, block[, cv]`` + any extra columns;
- covariates: ``block[, time]`` + one column per environment covariate — one row
  per block (static) or per block and time point (a daily series);
- marker graph: ``marker_a, marker_b, weight`` — one undirected edge per row;
- annotations: ``marker`` + numeric or categorical columns, one row per marker.

Every reader validates its file completely before returning; problems raise
:class:`InputError` naming the file, the line/column and the fix. Line numbers are
1-based and count the header as line 1.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import (
    EnvCovariates,
    Genotypes,
    MarkerAnnotations,
    MarkerGraph,
    MarkerMap,
    Phenotypes,
    allele_decoder,
    natural_key,
    smallest_uint,
)
from .atomic import atomic_path
from .errors import InputError, InputWarning

MISSING_TOKENS = {b"", b"NA", b"na", b"NaN", b"nan", b"."}
NA_TEXT = ["", "NA", "na", "NaN", "nan"]


def _open_lines(path) -> tuple[list[str], object]:
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


def _read_small_table(path, required: list[str], what: str) -> pd.DataFrame:
    """Read a narrow TSV as strings; ``required`` columns must lead the header."""
    fields, handle = _open_lines(path)
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


def _check_unique(path, values: pd.Series, column: str, what: str) -> None:
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


def _numeric(path, table: pd.DataFrame, column: str, fix: str) -> np.ndarray:
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
    table = _read_small_table(path, ["chr", "marker", "pos"], "chroms")
    _check_unique(path, table["marker"], "marker", "marker")
    pos = _numeric(path, table, "pos", "positions must be numbers (bp or cM)")
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
    fields, handle = _open_lines(path)
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
    copy = np.arange(ploidy)[None, None, :]
    # sorted copies: (P - d) copies of allele 1 then d copies of allele 2
    alleles = np.where(copy < ploidy - dosage[..., None], 1, 2).astype(np.uint8)
    alleles[dosage < 0] = 0
    return Genotypes(alleles, names, markers, n_alleles=2)


def _blocks(path, table: pd.DataFrame, column: str = "block"):
    """The environment ``column`` as block codes ``(rows,)`` int64 and their labels.

    Non-negative integers are the codes themselves (labels None); otherwise every
    distinct text is a label, numbered in natural order (``env2`` before
    ``env10``). A missing environment raises."""
    raw = table[column].str.strip()
    missing = raw.isin(NA_TEXT)
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise InputError(
            path,
            f"line {row + 2}, column {column!r}",
            "the environment is missing",
            "give every record an environment (a name or a non-negative integer)",
        )
    block = pd.to_numeric(raw, errors="coerce").to_numpy()
    integral = np.isfinite(block) & (block >= 0) & (block == np.round(block))
    if integral.all():
        return block.astype(np.int64), None
    labels = sorted(raw.unique().tolist(), key=natural_key)
    lookup = {label: code for code, label in enumerate(labels)}
    return raw.map(lookup).to_numpy(np.int64), labels


def _phenotype_columns(path, trait: str, environment: str, name: str) -> pd.DataFrame:
    """The table with its ``name``, trait and environment columns checked (the
    standard names must lead the header; other names may stand anywhere)."""
    if (name, trait, environment) == ("name", "response", "block"):
        return _read_small_table(path, ["name", "response", "block"], "phenotypes")
    table = _read_small_table(path, [], "phenotypes")
    chosen = {"--name": name, "--trait": trait, "--environment": environment}
    for option, column in chosen.items():
        if column not in table.columns:
            raise InputError(
                path,
                "line 1",
                f"no column {column!r} (given by {option})",
                f"use one of {list(table.columns)}",
            )
    standard = {"--name": "name", "--trait": "response", "--environment": "block"}
    for option, column in chosen.items():
        if column != standard[option] and standard[option] in table.columns:
            raise InputError(
                path,
                f"line 1, column {standard[option]!r}",
                f"this column would clash with {option} {column}",
                f"rename it, or pass {option} {standard[option]}",
            )
    return table


def read_phenotypes(
    path, trait: str = "response", environment: str = "block", name: str = "name"
) -> Phenotypes:
    """Read a phenotypes table; NA responses are dropped with a warning.

    ``trait``, ``environment`` and ``name`` are the columns holding the response,
    the environment (text or non-negative integers; text is numbered in natural
    order and kept as :attr:`Phenotypes.block_labels`) and the individual; they
    are renamed ``response``, ``block`` and ``name``.
    """
    table = _phenotype_columns(path, trait, environment, name)
    response = _numeric(path, table, trait, "use a number, or NA for a missing value")
    blocks, labels = _blocks(path, table, environment)
    out = table.rename(columns={name: "name", trait: "response", environment: "block"})
    out["response"] = response
    out["block"] = blocks
    na = np.isnan(response)
    if na.any():
        warnings.warn(
            f"{path}: dropped {int(na.sum())} row(s) with a missing response",
            InputWarning,
            stacklevel=2,
        )
        out = out[~na].reset_index(drop=True)
    if out.empty:
        raise InputError(
            path, None, "no row has a response", "fill the response column"
        )
    extra = [c for c in out.columns if c not in ("name", "response", "block", "cv")]
    return Phenotypes(out, str(path), extra, labels)


def read_covariates(path) -> EnvCovariates:
    """Read environment covariates ``block[, time], covariate...``.

    ``block`` holds non-negative integers (the phenotypes' block codes) or names
    (kept as :attr:`EnvCovariates.environments`, numbered in natural order, to be
    matched to the phenotypes' names by :func:`align_environments`).

    With a ``time`` column (second) the rows are a series per block (e.g. days
    after planting) and every block must have the same time points; without it,
    one row per block. Every covariate value must be a number (no missing value).
    """
    fields, handle = _open_lines(path)
    handle.close()
    required = ["block", "time"] if fields[1:2] == ["time"] else ["block"]
    table = _read_small_table(path, required, "covariates")
    names = [c for c in table.columns if c not in required]
    if not names:
        raise InputError(
            path, "line 1", "no covariate column", "add columns after " + required[-1]
        )
    # named environments are numbered in natural order here and matched to the
    # phenotypes' names by io.align_environments
    block, labels = _blocks(path, table)
    values = np.empty((len(table), len(names)))
    for j, column in enumerate(names):
        fix = "use a number (fill missing values, e.g. by interpolation)"
        values[:, j] = _numeric(path, table, column, fix)
        missing = np.isnan(values[:, j])
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise InputError(
                path, f"line {row + 2}, column {column!r}", "value is missing", fix
            )
    if required == ["block"]:
        _check_unique(path, pd.Series(block), "block", "block")
        order = np.argsort(block, kind="stable")
        return EnvCovariates(
            block[order], names, values[order, None, :], None, str(path), labels
        )
    time = _numeric(path, table, "time", "use a number, e.g. days after planting")
    if np.isnan(time).any():
        row = int(np.flatnonzero(np.isnan(time))[0])
        raise InputError(
            path, f"line {row + 2}, column 'time'", "time is missing", "fill it"
        )
    twice = pd.DataFrame({"block": block, "time": time}).duplicated()
    if twice.any():
        row = int(np.flatnonzero(twice.to_numpy())[0])
        raise InputError(
            path,
            f"line {row + 2}, column 'time'",
            f"block {block[row]} has time {time[row]:g} twice",
            "keep one row per block and time",
        )
    blocks = np.unique(block)
    times = np.sort(time[block == blocks[0]])
    out = np.empty((len(blocks), len(times), len(names)))
    for e, b in enumerate(blocks):
        rows = np.flatnonzero(block == b)
        own = time[rows]
        absent = np.setdiff1d(times, own)
        extra = np.setdiff1d(own, times)
        if len(absent) or len(extra):
            t = absent[0] if len(absent) else extra[0]
            row = rows[0] if len(absent) else rows[np.flatnonzero(own == t)[0]]
            raise InputError(
                path,
                f"line {row + 2}, column 'time'",
                f"block {b} {'lacks' if len(absent) else 'has extra'} time {t:g} "
                f"(block {blocks[0]} has {len(times)} time points)",
                "give every block the same time points",
            )
        out[e] = values[rows[np.argsort(own)]]
    return EnvCovariates(blocks, names, out, times, str(path), labels)


def _marker_rows(path, names: pd.Series, markers: MarkerMap, what: str) -> np.ndarray:
    """Map index of each name (-1 where absent, with a warning; none known raises)."""
    lookup = pd.Index(markers.names)
    index = lookup.get_indexer(names.str.strip())
    unknown = index < 0
    if unknown.all():
        raise InputError(
            path,
            "line 2",
            f"no {what} names a marker of the map, e.g. {names.iloc[0]!r}",
            "use the marker names of the chroms table / genotype file",
        )
    if unknown.any():
        warnings.warn(
            f"{path}: {int(unknown.sum())} row(s) name markers absent from the "
            f"genotypes (e.g. {names[unknown].iloc[0]!r}) and are ignored",
            InputWarning,
            stacklevel=3,
        )
    return index


def read_marker_graph(path, markers: MarkerMap) -> MarkerGraph:
    """Read an undirected edge list ``marker_a, marker_b, weight`` over ``markers``.

    Each row links two markers both ways; ``weight`` > 0 is the link's strength
    relative to a marker's link to itself (1). Rows naming markers absent from
    the map are dropped with a warning.
    """
    table = _read_small_table(path, ["marker_a", "marker_b", "weight"], "edge")
    weight = _numeric(path, table, "weight", "use a positive number")
    bad = ~(np.isfinite(weight) & (weight > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            path,
            f"line {row + 2}, column 'weight'",
            f"weight {table['weight'].iloc[row]!r} is not a positive number",
            "give every edge a positive weight or remove the row",
        )
    a = _marker_rows(path, table["marker_a"], markers, "edge")
    b = _marker_rows(path, table["marker_b"], markers, "edge")
    loop = (a == b) & (a >= 0)
    if loop.any():
        row = int(np.flatnonzero(loop)[0])
        raise InputError(
            path,
            f"line {row + 2}, column 'marker_b'",
            f"edge from {table['marker_a'].iloc[row]!r} to itself",
            "remove the row (every marker already reads itself)",
        )
    pair = pd.Series([f"{min(x, y)}-{max(x, y)}" for x, y in zip(a, b, strict=True)])
    known = (a >= 0) & (b >= 0)
    if not known.any():
        raise InputError(
            path,
            "line 2",
            "no edge joins two markers of the map",
            "use the marker names of the chroms table / genotype file",
        )
    dup = pair.duplicated() & known
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        first = int(np.flatnonzero((pair == pair.iloc[row]).to_numpy())[0])
        raise InputError(
            path,
            f"line {row + 2}",
            f"edge {table['marker_a'].iloc[row]!r} - {table['marker_b'].iloc[row]!r} "
            f"is also on line {first + 2} (edges are undirected)",
            "keep one row per pair of markers",
        )
    a, b, weight = a[known], b[known], weight[known]
    return MarkerGraph(
        np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([weight] * 2)
    )


def read_annotations(path, markers: MarkerMap) -> MarkerAnnotations:
    """Read ``marker, <columns>`` into annotations aligned to ``markers``.

    A column whose values are all numbers (or NA) is numeric; one with no number
    is categorical (each distinct text a level). Markers of the map without a row
    get missing values; rows naming other markers are dropped with a warning.
    """
    table = _read_small_table(path, ["marker"], "annotations")
    columns = [c for c in table.columns if c != "marker"]
    if not columns:
        raise InputError(
            path,
            "line 1",
            "no annotation column",
            "add columns after 'marker' (numbers, or text for categories)",
        )
    _check_unique(path, table["marker"].str.strip(), "marker", "marker")
    index = _marker_rows(path, table["marker"], markers, "annotation row")
    known = index >= 0
    numeric_names, numeric, categorical_names, codes, categories = [], [], [], [], []
    for column in columns:
        raw = table[column].str.strip()
        present = ~raw.isin(NA_TEXT)
        number = pd.to_numeric(raw.where(present), errors="coerce").to_numpy()
        is_number = present.to_numpy() & ~np.isnan(number)
        is_text = present.to_numpy() & np.isnan(number)
        if not (present.to_numpy() & known).any():
            raise InputError(
                path,
                f"column {column!r}",
                "no marker of the map has a value",
                "fill the column or remove it",
            )
        if is_number.any() and is_text.any():
            row = int(np.flatnonzero(is_text)[0])
            number_row = int(np.flatnonzero(is_number)[0])
            raise InputError(
                path,
                f"line {row + 2}, column {column!r}",
                f"{raw.iloc[row]!r} is text but line {number_row + 2} holds the "
                f"number {raw.iloc[number_row]!r}",
                "use numbers only (NA for missing) or text only for a category column",
            )
        if is_number.any():
            if np.isinf(number).any():
                row = int(np.flatnonzero(np.isinf(number))[0])
                raise InputError(
                    path,
                    f"line {row + 2}, column {column!r}",
                    f"{raw.iloc[row]!r} is not a finite number",
                    "use a finite number or NA",
                )
            values = np.full(len(markers), np.nan)
            values[index[known]] = number[known]
            numeric_names.append(column)
            numeric.append(values)
        else:
            levels = sorted(raw[is_text & known].unique().tolist(), key=natural_key)
            code_of = {level: k + 1 for k, level in enumerate(levels)}
            values = np.zeros(len(markers), dtype=np.int64)
            values[index[known]] = [
                code_of.get(v, 0) for v in raw[known].where(is_text[known], "")
            ]
            categorical_names.append(column)
            codes.append(values)
            categories.append(levels)
    n = len(markers)
    return MarkerAnnotations(
        numeric_names,
        np.stack(numeric, 1) if numeric else np.zeros((n, 0)),
        categorical_names,
        np.stack(codes, 1) if codes else np.zeros((n, 0), dtype=np.int64),
        categories,
    )


def read_marker_weights(path, markers: MarkerMap) -> np.ndarray:
    """Read ``marker, <one numeric column>`` of non-negative prior weights (a QTL
    indicator, a GWAS score from other data) into ``(M,)`` float64 aligned to
    ``markers``; markers without a value get the mean weight."""
    table = read_annotations(path, markers)
    if table.codes.shape[1] or table.numeric.shape[1] != 1:
        names = table.numeric_names + table.categorical_names
        raise InputError(
            path,
            "line 1",
            f"marker weights need one numeric column, found {names}",
            "keep 'marker' and one column of non-negative numbers",
        )
    values = table.numeric[:, 0]
    negative = np.flatnonzero(values < 0)
    if len(negative):
        raise InputError(
            path,
            f"marker {str(markers.names[negative[0]])!r}",
            f"weight {values[negative[0]]:g} is negative",
            "use non-negative weights (for a signed score, its absolute value)",
        )
    if not np.nansum(values) > 0:
        raise InputError(
            path,
            f"column {table.numeric_names[0]!r}",
            "every weight is 0",
            "give the markers of interest a positive weight",
        )
    return np.where(np.isnan(values), np.nanmean(values), values)


def match_phenotypes(phenotypes: Phenotypes, genotypes: Genotypes) -> Phenotypes:
    """Keep rows whose name has genotypes; warn with a count, raise if none match."""
    known = genotypes.index_of(phenotypes.table["name"]) >= 0
    if not known.any():
        raise InputError(
            phenotypes.source,
            "column 'name'",
            "no phenotype name matches an individual of the markers file",
            "use the same individual names in both files",
        )
    if not known.all():
        n_names = phenotypes.table.loc[~known, "name"].nunique()
        warnings.warn(
            f"{phenotypes.source}: {n_names} name(s) ({int((~known).sum())} rows) "
            "have no genotypes and are ignored",
            InputWarning,
            stacklevel=2,
        )
    table = phenotypes.table[known].reset_index(drop=True)
    return Phenotypes(
        table, phenotypes.source, phenotypes.extra_columns, phenotypes.block_labels
    )


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


def write_phenotypes(phenotypes: Phenotypes, path) -> None:
    write_table(phenotypes.table, path)


def write_covariates(covariates: EnvCovariates, path) -> None:
    """Write ``block[, time], covariates...`` (readable by :func:`read_covariates`)."""
    e, t, _ = covariates.values.shape
    frame = pd.DataFrame(covariates.values.reshape(e * t, -1), columns=covariates.names)
    if covariates.is_series:
        frame.insert(0, "time", np.tile(covariates.times, e))
    blocks = covariates.blocks
    if covariates.environments is not None:
        blocks = np.asarray(covariates.environments, dtype=object)
    frame.insert(0, "block", np.repeat(blocks, t))
    write_table(frame, path, float_format="%.6g")
