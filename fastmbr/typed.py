"""Typed dataclasses from untrusted dicts (config.json, G.json, recipes): unknown keys and wrong types are
FastmbrErrors naming the file and the key, never a TypeError traceback or a silently ignored ``epohcs: 3``."""

from __future__ import annotations

import dataclasses
import types
import typing

from fastmbr.errors import FastmbrError


def check_type(value, hint, where: str):
    """``value`` if it fits the type hint (str, int, float, bool, None, list[...], dict, unions), else an error."""
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return check_type(value, option, where)
            except FastmbrError:
                continue
        raise FastmbrError(f"{where}: {value!r} is not of type {type_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list or hint is list:
        if isinstance(value, list):
            (item,) = typing.get_args(hint) or (typing.Any,)
            return [check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise FastmbrError(f"{where}: {value!r} is not of type {type_name(hint)}")


def type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def build(cls, data, where: str, ignore: frozenset = frozenset()):
    """``cls(**data)`` after checking that ``data`` is a mapping of ``cls``'s own fields with values of their types.

    Nested dataclass fields are built the same way; keys in ``ignore`` are skipped."""
    if not isinstance(data, dict):
        raise FastmbrError(f"{where}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}, "
                           f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(k for k in data if k not in fields and k not in ignore)
    if unknown:
        raise FastmbrError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
                           f"known: {', '.join(sorted(fields))}")
    values = {}
    for key, value in data.items():
        if key in ignore:
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = build(hint, value, f"{where}: {key}")
        else:
            values[key] = check_type(value, hint, f"{where}: {key}")
    return cls(**values)
