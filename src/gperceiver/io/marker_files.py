"""The per-marker files a run may name (``marker_weights``, ``marker_graph``,
``annotations``), read once, at the edge, into
:class:`~gperceiver.data.MarkerInputs`."""

from __future__ import annotations

from ..data import MarkerInputs, MarkerMap
from .errors import InputError
from .tables import read_annotations, read_marker_graph, read_marker_weights

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
