"""Hyper-parameters: flat JSON files mapped 1:1 onto config dataclasses.

Precedence: dataclass defaults < ``--params`` JSON < options typed on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

from .io import InputError


def field_names(*classes) -> dict[str, type]:
    """Field name -> the config class that owns it (names are unique across classes)."""
    owners: dict[str, type] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            owners[f.name] = cls
    return owners


def read_params(path) -> dict:
    """Read a flat JSON object of hyper-parameters."""
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(
            path, None, "file not found", "check the --params path"
        ) from None
    except json.JSONDecodeError as err:
        raise InputError(
            path, f"line {err.lineno}", f"invalid JSON ({err.msg})", "fix the syntax"
        ) from None
    if not isinstance(values, dict):
        raise InputError(
            path, None, "expected a JSON object of name: value", "wrap the values in {}"
        )
    return values


def resolve(
    classes,
    defaults: dict,
    file_values: dict,
    typed: dict,
    source="--params",
    also_known: tuple = (),
):
    """Instantiate each class in ``classes`` from the merged values.

    ``defaults`` are job-specific defaults, ``file_values`` the JSON, ``typed`` the
    options given on the command line. Names owned by none of ``classes`` nor
    ``also_known`` (classes of a later stage reading the same file) raise
    :class:`InputError`.
    """
    owners = field_names(*classes)
    known = {**field_names(*also_known), **owners}
    for name in file_values:
        if name not in known:
            raise InputError(
                source,
                f"key {name!r}",
                "unknown hyper-parameter",
                f"use one of: {', '.join(sorted(known))}",
            )
    merged = {**defaults, **file_values, **typed}
    out = []
    for cls in classes:
        kwargs = {k: v for k, v in merged.items() if owners.get(k) is cls}
        for name, value in kwargs.items():
            typed_here = name in typed and name not in defaults
            where = f"--{name.replace('_', '-')}" if typed_here else source
            check_type(cls, name, value, where)
        try:
            out.append(cls(**kwargs))
        except (TypeError, ValueError) as err:
            name = next((k for k in kwargs if str(err).startswith(k)), "")
            where = f"--{name.replace('_', '-')}" if name in typed else source
            raise InputError(where, None, str(err), "fix the value") from None
    return out


def _accepts(kind, value) -> bool | None:
    """Whether ``value`` fits the annotation ``kind`` (None: not checked)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_accepts(k, value) for k in typing.get_args(kind)]
        return None if None in verdicts else any(verdicts)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return None  # tuples, nested configs: their class checks them


def check_type(cls, name: str, value, source) -> None:
    """Refuse a ``--params`` value of the wrong type (``"width": "64"``) in one
    line naming the key, before it reaches the model."""
    kind = typing.get_type_hints(cls).get(name)
    if kind is not None and _accepts(kind, value) is False:
        shown = getattr(kind, "__name__", None) or str(kind).replace("NoneType", "null")
        raise InputError(
            source,
            f"key {name!r}",
            f"{value!r} is not of type {shown}",
            f"give {name} as a JSON {shown}",
        )
