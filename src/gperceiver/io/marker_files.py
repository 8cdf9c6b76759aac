"""The per-marker files a run may name, read once, at the edge, into
:class:`~gperceiver.data.MarkerInputs`:

- marker graph: ``marker_a, marker_b, weight`` — one undirected edge per row;
- annotations: ``marker`` + numeric or categorical columns, one row per marker;
- marker weights: ``marker, weight`` — prior weights of the additive path.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..data import MarkerAnnotations, MarkerGraph, MarkerInputs, MarkerMap, natural_key
from .errors import InputError, InputWarning
from .tables import NA_TEXT, check_unique, numeric_column, read_small_table

LD = "ld"  # marker_graph value asking for an LD graph (computed, not read)


def read_marker_inputs(options: dict, markers: MarkerMap) -> MarkerInputs:
    """Read the files that ``options`` (merged ``--params`` and typed options)
    names, aligned to ``markers``: ``marker_weights``, ``marker_graph`` (unless
    it is ``"ld"``) and ``annotations``."""
    weights = options.get("marker_weights")
    graph = options.get("marker_graph")
    annotations = options.get("annotations")
    return MarkerInputs(
        weights=read_marker_weights(weights, markers) if weights else None,
        graph=read_marker_graph(graph, markers) if graph and graph != LD else None,
        annotations=read_annotations(annotations, markers) if annotations else None,
    )


def require_read(value, key: str, path):
    """``value`` read from the file ``path`` by the caller (``key`` the setting
    that names it); refused if it was not: the library opens no input file."""
    if value is None:
        raise InputError(
            key,
            None,
            f"names the file {path}, which was not read",
            "read it with gperceiver.io.read_marker_inputs and pass marker_inputs",
        )
    return value


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
    table = read_small_table(path, ["marker_a", "marker_b", "weight"], "edge")
    weight = numeric_column(path, table, "weight", "use a positive number")
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
    table = read_small_table(path, ["marker"], "annotations")
    columns = [c for c in table.columns if c != "marker"]
    if not columns:
        raise InputError(
            path,
            "line 1",
            "no annotation column",
            "add columns after 'marker' (numbers, or text for categories)",
        )
    check_unique(path, table["marker"].str.strip(), "marker", "marker")
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
