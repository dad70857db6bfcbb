"""Structure a recipe table into a frozen attrs Config, collecting every problem at once.

Checks, all reported together:
    1. unknown keys (with "did you mean", or the list of parameters);
    2. missing required fields;
    3. value types (TOML integers are accepted for floats, arrays for tuples, strings for ``Path``; ``Literal``
       members are named, with "did you mean" for a near miss); nested attrs Configs are structured recursively;
    4. each field's own validator, run field by field so that two out-of-range values are two problems;
    5. the Config's cross-field checks (``__attrs_post_init__``), which can only run once every field is valid.

Validator messages are rewritten from attrs' ``'alpha' must be <= 1: 1.5`` into the house form
``'alpha' must be <= 1 (got 1.5)``.

:func:`unstructure` goes the other way (Config → TOML-ready dict, defaults included) for resolved recipes, and
:func:`describe_fields` / :func:`field_docs` feed ``lmix components NAME`` and the docs.
"""

from __future__ import annotations

import difflib
import enum
import inspect
import re
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal

import attrs

from lmix_core.errors import ConfigError, Problem

_ATTRS_BOUND = re.compile(r"^([^\n]*'[^']+' must be [^\n]*?): (.+)$", re.DOTALL)


def _literal(option: Any) -> str:
    """An option as a recipe writes it (TOML's ``false``, not Python's ``False``)."""
    return str(option).lower() if isinstance(option, bool) else repr(option)


def _choices(options: tuple[Any, ...]) -> str:
    """``'a' or 'b'``; ``one of 'a', 'b', 'c'`` for three or more."""
    if len(options) <= 2:
        return " or ".join(_literal(o) for o in options)
    return "one of " + ", ".join(_literal(o) for o in options)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return _choices(typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            return f"array of {_type_name(args[0])}"
        if args:
            return f"array of ({', '.join(_type_name(a) for a in args)})"
        return "array"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        args = typing.get_args(tp)
        return f"table of {_type_name(args[1])}" if len(args) == 2 and args[1] is not Any else "table"
    if tp is type(None):
        return "nothing"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _choices(tuple(m.value for m in tp))
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return "path"
    if isinstance(tp, type) and attrs.has(tp):
        return "table"
    return {float: "number", int: "integer", str: "string", bool: "boolean"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _literal_hint(value: Any, options: tuple[Any, ...]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [o for o in options if isinstance(o, str)], n=3, cutoff=0.6)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class _ConvertError(TypeError):
    """A value of the wrong type; ``hint`` is an optional suggestion."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _convert(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``TypeError`` with an attrs-style message."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        options = typing.get_args(tp)
        if any(o is value for o in options) or (value in options and type(value) is not bool):
            return value  # a boolean only where the options name it (1 == True is not a choice)
        raise _ConvertError(f"must be {_type_name(tp)}", _literal_hint(value, options))
    if origin in (typing.Union, types.UnionType):
        hint = ""
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _convert(value, arg)
            except _ConvertError as exc:
                hint = hint or exc.hint
                continue
            except TypeError:
                continue
        raise _ConvertError(f"must be {_type_name(tp)}", hint)
    if origin is tuple or tp is tuple:
        if not isinstance(value, list | tuple):
            raise _ConvertError(f"must be {_type_name(tp)}")
        args = typing.get_args(tp)
        if not args:
            return tuple(value)
        try:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_convert(v, args[0]) for v in value)
            if len(args) != len(value):
                raise _ConvertError(f"must be an array of {len(args)} values")
            return tuple(_convert(v, a) for v, a in zip(value, args))
        except _ConvertError as exc:
            if len(args) != len(value) and not (len(args) == 2 and args[1] is Ellipsis):
                raise exc from None
            raise _ConvertError(f"must be {_type_name(tp)}") from None
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, dict):
            raise _ConvertError(f"must be {_type_name(tp)}")
        args = typing.get_args(tp)
        if len(args) == 2:
            try:
                return {_convert(k, args[0]): _convert(v, args[1]) for k, v in value.items()}
            except _ConvertError:
                raise _ConvertError(f"must be {_type_name(tp)}") from None
        return dict(value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _ConvertError("must be a number")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _ConvertError("must be an integer")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _ConvertError("must be true or false")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _ConvertError("must be a string")
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, str | PurePath):
            return tp(value)
        raise _ConvertError("must be a path (a string)")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError:
            raise _ConvertError(
                f"must be {_type_name(tp)}", _literal_hint(value, tuple(m.value for m in tp))
            ) from None
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _ConvertError(f"must be {_type_name(tp)}")


def _init_fields(cls: type) -> dict[str, attrs.Attribute]:
    """The fields a recipe may set, keyed by their ``__init__`` name."""
    return {(getattr(f, "alias", None) or f.name): f for f in attrs.fields(cls) if f.init}


def _nested_attrs(tp: Any) -> type | None:
    """The attrs class in ``tp`` (``Cfg`` or ``Cfg | None``), for recursive structuring."""
    if isinstance(tp, type) and attrs.has(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if isinstance(a, type) and attrs.has(a)]
        if len(found) == 1:
            return found[0]
    return None


def _default_of(f: attrs.Attribute) -> Any:
    default: Any = f.default
    # attrs' annotations declare Factory a function; at runtime it is the class of factory defaults
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory(None) if default.takes_self else default.factory()
    return default


def _house_wording(message: str) -> str:
    """``'x' must be >= 1: 0`` → ``'x' must be >= 1 (got 0)``; other messages unchanged (first line only)."""
    message = message.strip().split("\n")[0]
    m = _ATTRS_BOUND.match(message)
    if m and "(got" not in message:
        return f"{m.group(1)} (got {m.group(2)})"
    return message


def describe_fields(cls: type) -> list[tuple[str, str, str]]:
    """``(name, type, default)`` for each Config field, for ``lmix components NAME`` and the docs."""
    hints = typing.get_type_hints(cls)
    rows = []
    for name, f in _init_fields(cls).items():
        written = recipe_type(f, hints.get(f.name, Any))
        if f.default is attrs.NOTHING:
            default = "(required)"
        else:
            try:
                default = repr(_default_of(f))
            except Exception:  # a factory that needs a real instance
                default = "(computed)"
        rows.append((name, _type_name(written), default))
    return rows


def _false_means_none(field: attrs.Attribute) -> bool:
    """Whether the field's recipe type names ``false`` (which its converter turns into ``None``)."""
    tp = field.metadata.get("recipe_type")
    return tp is not None and any(
        typing.get_origin(a) is Literal and False in typing.get_args(a) for a in typing.get_args(tp)
    )


def recipe_type(field: attrs.Attribute, annotated: Any) -> Any:
    """The type a recipe writes for ``field``: ``metadata["recipe_type"]`` when the field declares one (a
    converter then maps it to the field's own type, e.g. ``false`` to ``None`` for a column a recipe turns off,
    since TOML has no null), else the field's annotation."""
    return field.metadata.get("recipe_type", annotated)


def field_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the Google-style ``Attributes:`` sections of ``cls``'s docstring and of the classes
    it inherits fields from (``class Config(BackendSettings)``); may be empty."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object and "__doc__" in vars(klass):
            out.update(_own_field_docs(klass))
    return out


def _own_field_docs(cls: type) -> dict[str, str]:
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    in_section = False
    current = None
    indent = None
    for line in doc.splitlines():
        if line.strip() in ("Attributes:", "Args:", "Parameters:"):
            in_section, current, indent = True, None, None
            continue
        if not in_section:
            continue
        if not line.strip():
            current = None
            continue
        lead = len(line) - len(line.lstrip())
        if indent is None:
            indent = lead
        if lead == 0:
            in_section = False
            continue
        m = re.match(r"^\s*([A-Za-z_]\w*)\s*(\([^)]*\))?:\s*(.*)$", line)
        if lead == indent and m:
            current = m.group(1)
            out[current] = m.group(3).strip()
        elif current is not None and lead > indent:
            out[current] = (out[current] + " " + line.strip()).strip()
    return out


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
    fields = _init_fields(cls)
    problems: list[Problem] = []
    kwargs: dict[str, Any] = {}
    prefix = f"{path}." if path else ""
    for key, value in table.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(sorted(fields)) or "none"
            problems.append(
                Problem(
                    f"{prefix}{key}", f"{owner} has no parameter {key!r}", hint or f"its parameters: {known}"
                )
            )
            continue
        f = fields[key]
        tp = recipe_type(f, hints.get(f.name, Any))
        nested = _nested_attrs(tp)
        if nested is not None and isinstance(value, Mapping):
            sub, sub_problems = structure(nested, value, path=f"{prefix}{key}", owner=f"{owner} {key}")
            problems += sub_problems
            kwargs[key] = sub
            continue
        try:
            kwargs[key] = _convert(value, tp)
        except TypeError as exc:
            hint = getattr(exc, "hint", "")
            problems.append(Problem(f"{prefix}{key}", f"{key!r} {exc} (got {value!r})", hint))
    for name, f in fields.items():
        if name not in table and f.default is attrs.NOTHING:
            problems.append(Problem(f"{prefix}{name}", f"required by {owner}, but missing"))
    problems += _run_field_validators(fields, kwargs, prefix)
    if problems:
        return None, problems
    try:
        return cls(**kwargs), []
    except (ValueError, TypeError, ConfigError) as exc:
        message = _house_wording(str(exc))
        where = _field_in_message(message, fields)
        return None, [Problem(f"{prefix}{where}" if where else path, message)]


def _run_field_validators(
    fields: Mapping[str, attrs.Attribute], kwargs: Mapping[str, Any], prefix: str
) -> list[Problem]:
    """Run the converter and validator of every well-typed field on its own, so each bad field is its own problem.

    Validators get a stand-in instance holding every value (given, default, or None where neither is known); one
    that needs the real instance and fails in another way is left to the real construction, which runs all
    validators again.
    """
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name in kwargs:
            values[f.name] = kwargs[name]
        elif f.default is attrs.NOTHING:
            values[f.name] = None
        else:
            try:
                values[f.name] = _default_of(f)
            except Exception:
                values[f.name] = None
    stand_in = types.SimpleNamespace(**values)
    problems = []
    for name, f in fields.items():
        if name not in kwargs:
            continue
        value = kwargs[name]
        try:
            if f.converter is not None:
                if not callable(f.converter) or isinstance(f.converter, attrs.Converter):
                    continue
                value = f.converter(value)
            if f.validator is not None:
                f.validator(stand_in, f, value)
        except (ValueError, TypeError) as exc:
            problems.append(Problem(f"{prefix}{name}", _house_wording(str(exc))))
        except Exception:  # the validator needs the real instance: construction will tell
            continue
    return problems


def _field_in_message(message: str, fields: Mapping[str, Any]) -> str:
    """The field the message names first (``'minibatches' must divide 'prompts_per_step'`` → minibatches)."""
    found = [(message.find(f"'{name}'"), name) for name in fields if f"'{name}'" in message]
    return min(found)[1] if found else ""


def unstructure(obj: Any) -> Any:
    """A Config (or value) as plain TOML-ready data: tables, arrays, strings, numbers, booleans.

    Tuples become lists, paths strings, enums their values, nested Configs tables. ``None`` values are left out
    (TOML has no null) and read back as the field's default, except in a field whose recipe type admits ``false``
    for "none" (see :func:`recipe_type`; e.g. ``data.demonstration_column``), where ``None`` is written ``false``.
    """
    if attrs.has(type(obj)):
        out = {}
        for f in attrs.fields(type(obj)):
            if not f.init:
                continue
            value = getattr(obj, f.name)
            if value is None and _false_means_none(f):
                value = False
            if value is None:
                continue
            out[getattr(f, "alias", None) or f.name] = unstructure(value)
        return out
    if isinstance(obj, Mapping):
        return {str(k): unstructure(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [unstructure(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return unstructure(obj.value)
    return obj


def build(cls: type, table: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
    """Structure a Config outside recipes (tests, library use); raises :class:`ConfigError` listing problems."""
    merged = {**(table or {}), **overrides}
    config, problems = structure(cls, merged, path="", owner=cls.__qualname__)
    if problems:
        raise ConfigError("\n".join(p.render().strip() for p in problems))
    return config
