"""The declarative validation engine: a field states its bounds beside its default (:func:`_f`), and
:func:`_build` turns a nested mapping into the dataclass, checking every value against its declared type and
bounds. A failure is a :class:`ConfigError` naming the file, the dotted key and what is allowed, e.g.::

    params.yaml: train.lr = -1.0 is out of range: expected a number > 0.0
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from functools import cache
from typing import Any, Union, get_args, get_origin


class ConfigError(ValueError):
    """A params.yaml problem; the message names the file, the key and what is allowed."""


class _NotFinite(ConfigError):
    """A NaN or infinite number: reported as such, not as a wrong type."""


def _f(default: Any = dataclasses.MISSING, *, gt=None, ge=None, le=None, lt=None, choices=None, doc="", **kw):
    """A dataclass field with validation metadata (bounds, allowed values, help text)."""
    meta = {"gt": gt, "ge": ge, "le": le, "lt": lt, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)  # type: ignore[misc]
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta, **kw)


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {int: "integer", float: "number", str: "string", bool: "true/false", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp, where: str, src: str):
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``where``."""
    origin = get_origin(tp)
    at = f"{src}: {where}" if src else where
    bad = ConfigError(f"{at} = {value!r} has the wrong type: expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, where, src)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, where, src)
            except _NotFinite:
                raise
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]", src) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise bad
        if not math.isfinite(number):
            raise _NotFinite(f"{at} = {value!r} is not a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _check_range(value, meta: Mapping, where: str, src: str):
    at = f"{src}: {where}" if src else where
    checks = [
        ("gt", lambda v, b: v > b, ">"),
        ("ge", lambda v, b: v >= b, ">="),
        ("lt", lambda v, b: v < b, "<"),
        ("le", lambda v, b: v <= b, "<="),
    ]
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            for key, ok, _sym in checks:
                bound = meta.get(key)
                if bound is not None and not ok(v, bound):
                    allowed = " and ".join(f"{s} {meta[k]}" for k, _, s in checks if meta.get(k) is not None)
                    raise ConfigError(f"{at} = {value!r} is out of range: expected a number {allowed}")
        choices = meta.get("choices")
        if choices and v not in choices:
            raise ConfigError(f"{at} = {v!r} is not allowed: expected one of {', '.join(map(repr, choices))}")


def check_field(cls, name: str, value: Any, where: str, src: str = "") -> Any:
    """``value`` as field ``name`` of dataclass ``cls`` takes it (type, bounds, allowed values), else ConfigError
    naming ``where``. The training package checks each value a search may draw with it."""
    coerced = _coerce(value, _hints(cls)[name], where, src)
    _check_range(coerced, _fields(cls)[name].metadata, where, src)
    return coerced


@cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _build(cls, data: dict, prefix: str, src: str):
    """``cls(**data)``, every value checked (:func:`check_field`); an unknown key lists the allowed ones."""
    names = _fields(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{src}: unknown key '{key}': allowed keys here are {', '.join(sorted(names))}")
    kwargs = {
        name: check_field(cls, name, value, f"{prefix}.{name}" if prefix else name, src) for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{src}: {e}") from None
