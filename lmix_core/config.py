"""Structure a recipe table into a frozen attrs Config, collecting every problem at once.

Checks, in order, and all reported together: unknown keys (with "did you mean"), missing required fields, value
types (TOML ints are accepted for floats, arrays for tuples, ``Literal`` members named), then the Config's own
validators (attrs wording: ``'alpha' must be <= 1: 1.5``).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from lmix_core.errors import ConfigError, Problem

_MISSING = object()


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _type_name(args[0]) if args else "value"
        return f"array of {inner}"
    if tp is type(None):
        return "nothing"
    return {float: "number", int: "integer", str: "string", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``TypeError`` with an attrs-style message."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is not bool:
            return value
        raise TypeError(f"must be {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _convert(value, arg)
            except TypeError:
                continue
        raise TypeError(f"must be {_type_name(tp)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError(f"must be {_type_name(tp)}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0]) for v in value)
        if len(args) != len(value):
            raise TypeError(f"must be an array of {len(args)} values")
        return tuple(_convert(v, a) for v, a in zip(value, args))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, dict):
            raise TypeError("must be a table")
        return dict(value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError("must be a number")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("must be an integer")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("must be true or false")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError("must be a string")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeError(f"must be {_type_name(tp)}")


def describe_fields(cls: type) -> list[tuple[str, str, str]]:
    """``(name, type, default)`` for each Config field, for ``lmix components NAME`` and the docs."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in attrs.fields(cls):
        if f.default is attrs.NOTHING:
            default = "(required)"
        elif isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]
            default = repr(f.default.factory())
        else:
            default = repr(f.default)
        rows.append((f.name, _type_name(hints.get(f.name, Any)), default))
    return rows


def structure(cls: type, table: Mapping[str, Any], *, path: str, owner: str) -> tuple[Any, list[Problem]]:
    """Build ``cls(**table)`` or return every problem.

    Args:
        cls: an attrs Config class.
        table: the recipe table, without the reserved ``type`` key.
        path: dotted recipe path of the table, used as the prefix of every problem's path.
        owner: what the Config belongs to, for messages (``logit_average``, ``[train]``).

    Returns:
        ``(config, [])`` or ``(None, problems)``.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    problems: list[Problem] = []
    kwargs: dict[str, Any] = {}
    prefix = f"{path}." if path else ""
    for key, value in table.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(sorted(fields)) or "none"
            problems.append(
                Problem(f"{prefix}{key}", f"{owner} has no parameter {key!r}", hint or f"its parameters: {known}")
            )
            continue
        try:
            kwargs[key] = _convert(value, hints.get(key, Any))
        except TypeError as exc:
            problems.append(Problem(f"{prefix}{key}", f"{key!r} {exc} (got {value!r})"))
    for name, f in fields.items():
        if name not in table and f.default is attrs.NOTHING:
            problems.append(Problem(f"{prefix}{name}", f"required by {owner}, but missing"))
    if problems:
        return None, problems
    try:
        return cls(**kwargs), []
    except (ValueError, TypeError, ConfigError) as exc:
        where = _field_in_message(str(exc), fields)
        return None, [Problem(f"{prefix}{where}" if where else path, str(exc).split("\n")[0])]


def _field_in_message(message: str, fields: Mapping[str, Any]) -> str:
    for name in fields:
        if f"'{name}'" in message:
            return name
    return ""


def build(cls: type, table: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
    """Structure a Config outside recipes (tests, library use); raises :class:`ConfigError` listing problems."""
    merged = {**(table or {}), **overrides}
    config, problems = structure(cls, merged, path="", owner=cls.__qualname__)
    if problems:
        raise ConfigError("\n".join(p.render().strip() for p in problems))
    return config
