"""Recipes: TOML in, a validated :class:`Recipe` out, every problem reported at once.

A recipe names one registered component per slot and sets the run's settings::

    schema = 1
    description = "GRPO with logit averaging against the SFT model"

    [backend]                 # required; `type` names a registered backend, other keys are its Config fields
    type = "hf"
    model = "runs/sft/model"

    [combiner]                # optional slots, each with a default type: combiner=policy, advantage=grpo,
    type = "logit_average"    # loss=ppo_clip, mixer=rl, rollout_engine=hf
    alpha = 0.5

    [[rewards]]               # at least one; `weight` (default 1.0) is not a Config field
    type = "math"
    weight = 1.0

    [train]                   # settings tables: train (required: steps), sampling, eval, logging, data (required)
    steps = 100

    [data]
    train = "data/train.jsonl"

:func:`load_recipe` reads the file, applies command-line overrides (``combiner.alpha=0.7``, ``rewards[0].weight=0.5``),
resolves relative paths, then validates everything before anything heavy is built: it imports the named component
classes to read their ``Config`` (no model is built) and collects every problem into one :class:`RecipeError`.
:func:`recipe_from_mapping` does the same for a recipe given as a Python mapping (the TOML's shape), and
``load_recipe("demo:grpo")`` reads a recipe shipped in the package (:mod:`lmix_core.shipped_recipes`).
See ``docs/recipes.md`` for the full reference.
"""

from __future__ import annotations

import copy
import datetime
import importlib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import attrs

from lmix_core.config import _init_fields, structure, unstructure
from lmix_core.errors import LmixError, Problem, RecipeError, UnknownComponentError
from lmix_core.registry import Entry, Registry
from lmix_core.shipped_recipes import is_shipped_name, shipped_recipe

#: The recipe format version this lmix reads.
SCHEMA = 1


@attrs.frozen
class Slot:
    """A single-component table of the recipe.

    Attributes:
        key: the table's name in the recipe (``combiner``).
        kind: the registry kind (``combiner``).
        default: the type used when the table or its ``type`` is absent, or None when the table is required.
    """

    key: str
    kind: str
    default: str | None


#: Single-component slots, in the order the loop uses them.
SLOTS: tuple[Slot, ...] = (
    Slot("backend", "backend", None),
    Slot("combiner", "combiner", "policy"),
    Slot("advantage", "advantage", "grpo"),
    Slot("loss", "loss", "ppo_clip"),
    Slot("mixer", "mixer", "rl"),
    Slot("rollout_engine", "rollout_engine", "hf"),
)
#: The array-of-tables slot: reward verifiers, each with a weight.
REWARDS = "rewards"
#: Settings tables and their Config classes (``module:Class``, imported when a recipe is validated).
SETTINGS: dict[str, str] = {
    "train": "lmix_core.settings:TrainConfig",
    "sampling": "lmix_core.settings:SamplingConfig",
    "eval": "lmix_core.settings:EvalConfig",
    "logging": "lmix_core.settings:LoggingConfig",
    "data": "lmix_core.data.config:DataConfig",
}
#: Settings tables a recipe must have even if their Config could be built from defaults.
REQUIRED_SETTINGS = frozenset({"data"})
#: Fields of ``[data]`` that are file paths (typed ``str``): relative values are resolved against the recipe.
DATA_PATH_FIELDS = ("train", "eval")
#: Fields of ``[backend]`` that may be local paths or hub ids: resolved against the recipe when they start with
#: ``./`` or ``../`` or exist relative to it (the defaults of ``TrainerBackend.model_field``/``references_field``;
#: a backend that declares other fields gets those resolved).
BACKEND_PATH_FIELDS = ("model", "references")
#: Kinds built with a context, and who builds it.
CONTEXT_KINDS = {
    "backend": "a BackendContext: build it with spec.build(context) after the other components (the training "
    "loop does this)",
    "rollout_engine": "an EngineContext: pass spec.build as BackendContext.rollout_engine (the backend builds "
    "the engine)",
}
TOP_LEVEL = ("schema", "description", *(s.key for s in SLOTS), REWARDS, *SETTINGS)


# -- components --------------------------------------------------------------------------------------------------


@attrs.frozen
class ComponentSpec:
    """A validated component choice: its class and structured Config, not yet built.

    Attributes:
        kind: the registry kind (``combiner``).
        name: the registered name (``logit_average``).
        cls: the imported component class.
        config: an instance of ``cls.Config``.
        weight: the reward's weight (``[[rewards]]`` only; 1.0 elsewhere).
        entry: the registry entry (providing distribution, version, entry point).
        slot: where it sits in the recipe (``combiner``, ``rewards[1]``).
    """

    kind: str
    name: str
    cls: type
    config: Any
    weight: float = 1.0
    entry: Entry | None = None
    slot: str = ""

    def build(self, context: Any = None) -> Any:
        """Instantiate the component: ``cls(config)``, or ``cls(config, context)`` for a backend or rollout engine.

        Args:
            context: required for the kinds in :data:`CONTEXT_KINDS` and refused for the others: the backend's
                :class:`~lmix_core.interfaces.backend.BackendContext` (the training loop builds it once the other
                components exist), the rollout engine's :class:`~lmix_core.interfaces.rollout_engine.EngineContext`
                (the backend builds it: pass ``spec.build`` as ``BackendContext.rollout_engine``).
        """
        if self.kind in CONTEXT_KINDS:
            if context is None:
                raise LmixError(f"{self.kind} {self.name!r} needs {CONTEXT_KINDS[self.kind]}")
            return self.cls(self.config, context)
        if context is not None:
            raise LmixError(
                f"{self.kind} {self.name!r} takes no context (only {' and '.join(CONTEXT_KINDS)} do)"
            )
        return self.cls(self.config)

    @property
    def distribution(self) -> str:
        return self.entry.dist if self.entry is not None else "?"

    @property
    def version(self) -> str:
        return self.entry.version if self.entry is not None else "?"

    def provenance(self) -> dict[str, str]:
        """``{slot, kind, name, distribution, version, entry_point}``."""
        return {
            "slot": self.slot,
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.entry.value if self.entry is not None else "",
        }


@attrs.frozen(kw_only=True)
class Recipe:
    """A validated recipe: every component chosen and configured, every setting structured.

    Attributes:
        source: the recipe file (for a mapping, the ``source`` it was given).
        schema: the format version (always :data:`SCHEMA`).
        description: free text from the recipe.
        raw: the recipe as read, after overrides and path resolution, before defaults are filled in.
        backend, combiner, advantage, loss, mixer, rollout_engine: the single-component slots.
        rewards: the reward verifiers, in recipe order, with their weights.
        train, sampling, eval, logging: :mod:`lmix_core.settings` Configs.
        data: the :class:`~lmix_core.data.config.DataConfig`.
    """

    source: Path
    schema: int = SCHEMA
    description: str = ""
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False)
    backend: ComponentSpec
    combiner: ComponentSpec
    advantage: ComponentSpec
    loss: ComponentSpec
    mixer: ComponentSpec
    rollout_engine: ComponentSpec
    rewards: tuple[ComponentSpec, ...]
    train: Any
    sampling: Any
    eval: Any
    logging: Any
    data: Any

    def components(self) -> list[ComponentSpec]:
        """Every component in recipe order: backend, combiner, advantage, loss, mixer, rollout engine, rewards."""
        return [getattr(self, s.key) for s in SLOTS] + list(self.rewards)

    def resolved(self) -> dict[str, Any]:
        """The fully resolved recipe (types, defaults and absolute paths filled in), TOML-serialisable.

        ``load_recipe`` of ``dump_toml(recipe.resolved())`` gives back an equal recipe.
        """
        out: dict[str, Any] = {"schema": self.schema}
        if self.description:
            out["description"] = self.description
        for slot in SLOTS:
            spec = getattr(self, slot.key)
            out[slot.key] = {"type": spec.name, **unstructure(spec.config)}
        out[REWARDS] = [{"type": s.name, "weight": s.weight, **unstructure(s.config)} for s in self.rewards]
        for key in SETTINGS:
            out[key] = unstructure(getattr(self, key))
        return out

    def to_toml(self) -> str:
        """:meth:`resolved` as TOML text (what a run saves as ``recipe.toml``)."""
        return dump_toml(self.resolved())

    def provenance(self) -> list[dict[str, str]]:
        """One ``{slot, kind, name, distribution, version, entry_point}`` per component, in recipe order."""
        return [spec.provenance() for spec in self.components()]

    def summary(self) -> str:
        """One line naming every component with its provider, for ``lmix validate`` and run logs."""
        parts = [
            f"{s.slot}={s.name} ({s.distribution} {s.version})"
            for s in self.components()
            if s.kind != "reward"
        ]
        rewards = ", ".join(f"{s.name}*{s.weight:g} ({s.distribution} {s.version})" for s in self.rewards)
        return ", ".join(parts) + f", rewards=[{rewards}]"


# -- reading and overrides ---------------------------------------------------------------------------------------


def _read(source: Path, label: str) -> dict[str, Any]:
    if not source.exists():
        raise RecipeError(
            label, [Problem("", f"no such file: {str(source)!r}", f"current directory: {os.getcwd()}")]
        )
    if source.is_dir():
        raise RecipeError(label, [Problem("", f"{str(source)!r} is a directory, not a recipe file")])
    try:
        text = source.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(label, [Problem("", f"not UTF-8 text: {exc}")]) from None
    except OSError as exc:
        raise RecipeError(label, [Problem("", f"cannot be read: {exc}")]) from None
    return _parse(text, label)


def _parse(text: str, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _error_line(text, str(exc))
        hint = f"that line reads: {line}" if line else ""
        raise RecipeError(label, [Problem("", f"not valid TOML: {exc}", hint)]) from None


def _error_line(text: str, message: str) -> str:
    m = re.search(r"line (\d+)", message)
    if not m:
        return ""
    lines = text.splitlines()
    n = int(m.group(1))
    return lines[n - 1].strip() if 0 < n <= len(lines) else ""


_KEY_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)((?:\[\d+\])*)")


class OverrideError(LmixError, ValueError):
    """A command-line override that cannot be parsed (raised by :func:`parse_override`)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _format_path(segments: Sequence[str | int]) -> str:
    out = ""
    for seg in segments:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else seg)
    return out


def parse_override(text: str) -> tuple[tuple[str | int, ...], Any]:
    """Split ``key.sub[0].x=value`` into path segments and a TOML-parsed value.

    Keys are dotted names; an array element is ``name[index]`` (``rewards[0].weight``), or equivalently
    ``rewards.0.weight`` (no brackets to quote in zsh). The value is parsed as a TOML value (``0.5``, ``true``,
    ``"text"``, ``[1, 2]``, ``{type = "rloo"}``); a bare word that is not valid TOML is taken as a string
    (``backend.model=runs/x/model``), while something that starts like a TOML string, array or table and does
    not parse is an error.

    Raises:
        OverrideError: no ``=``, a malformed key, an empty value or a malformed TOML value.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise OverrideError("is not KEY=VALUE", "e.g. combiner.alpha=0.7 or rewards[0].weight=0.5")
    segments: list[str | int] = []
    for part in key.split("."):
        if part.isdigit() and segments:
            segments.append(int(part))
            continue
        m = _KEY_SEGMENT.fullmatch(part)
        if not m:
            raise OverrideError(
                f"has a malformed key {key!r}",
                "keys are dotted names with optional [index]: rewards[0].weight",
            )
        segments.append(m.group(1))
        segments += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return tuple(segments), _parse_value(value)


def _parse_value(text: str) -> Any:
    s = text.strip()
    if not s:
        raise OverrideError("has no value", 'for an empty string write KEY=""')
    if "\n" not in s:
        try:
            parsed = tomllib.loads(f"v = {s}")
            if set(parsed) == {"v"}:
                return parsed["v"]
        except tomllib.TOMLDecodeError as exc:
            if s[0] in "[{\"'":
                raise OverrideError(
                    f"has a value that is not valid TOML: {exc}", "quote strings: 'key=\"text\"'"
                ) from None
    elif s[0] in "[{\"'":
        raise OverrideError("has a multi-line value", "write arrays and tables on one line")
    return s


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied: tables merge key by key, any other value replaces (neither is modified).

    How the demo, the comparisons and the studies build a recipe mapping from a shared one and their changes.
    """
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> tuple[list[Problem], list[str]]:
    """Apply ``KEY=VALUE`` overrides to ``data`` in place.

    Returns:
        The problems (one per bad override; the others are applied) and the canonical paths that were set
        (``rewards[0].weight``), whose relative file paths are then resolved against the working directory.
    """
    problems: list[Problem] = []
    applied: list[str] = []
    for text in overrides:
        where = f"override {text!r}"
        try:
            segments, value = parse_override(text)
            _set(data, segments, value)
        except OverrideError as exc:
            problems.append(Problem(where, str(exc), exc.hint))
            continue
        applied.append(_format_path(segments))
    return problems, applied


def _set(data: dict[str, Any], segments: Sequence[str | int], value: Any) -> None:
    node: Any = data
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        here = _format_path(segments[: i + 1])
        parent = _format_path(segments[:i]) or "the recipe"
        if isinstance(seg, int):
            if not isinstance(node, list):
                raise OverrideError(f"cannot index {parent}: it is {_kind_of(node)}, not an array")
            if seg > len(node):
                raise OverrideError(
                    f"{here} is out of range: {parent} has {len(node)} entries",
                    f"use index {len(node)} to add one",
                )
            if seg == len(node):
                node.append(value if last else {} if isinstance(segments[i + 1], str) else [])
            elif last:
                node[seg] = value
            node = node[seg]
        else:
            if not isinstance(node, dict):
                raise OverrideError(f"cannot set {here}: {parent} is {_kind_of(node)}, not a table")
            if last:
                node[seg] = value
            else:
                if seg not in node:
                    node[seg] = [] if isinstance(segments[i + 1], int) else {}
                node = node[seg]


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"the value {value!r}"


# -- path resolution ---------------------------------------------------------------------------------------------


@attrs.frozen
class _Bases:
    """Where relative paths are resolved: the recipe's folder, or the working directory for overridden keys."""

    recipe_dir: Path
    cwd: Path
    overridden: tuple[str, ...]

    def for_key(self, path: str) -> Path:
        for p in self.overridden:
            if path == p or path.startswith((p + ".", p + "[")):
                return self.cwd
        return self.recipe_dir


def _absolute(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p) if value.startswith("~") else value
    return os.path.normpath(base / p)


def _is_path_type(tp: Any) -> str:
    """``one`` for a path field, ``many`` for an array of paths, ``''`` otherwise."""
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return "one"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = {_is_path_type(a) for a in args} - {""}
        return kinds.pop() if len(kinds) == 1 else ""
    if origin in (tuple, list) and args and _is_path_type(args[0]) == "one":
        return "many"
    return ""


def _resolve_paths(
    table: dict[str, Any], cls: type, path: str, bases: _Bases, *, names: Sequence[str] = ()
) -> None:
    """Make relative file paths in ``table`` absolute (in place).

    Resolved: fields typed ``Path`` (or arrays of them) in ``cls``, and the fields in ``names``.
    """
    try:
        hints = typing.get_type_hints(cls)
        fields = _init_fields(cls)
    except Exception:
        return
    for key, value in table.items():
        f = fields.get(key)
        typed = _is_path_type(hints.get(f.name)) if f is not None else ""
        if not typed and key not in names:
            continue
        if isinstance(value, str):
            table[key] = _absolute(value, bases.for_key(f"{path}.{key}"))
        elif isinstance(value, list):
            table[key] = [
                _absolute(v, bases.for_key(f"{path}.{key}[{i}]")) if isinstance(v, str) else v
                for i, v in enumerate(value)
            ]


def _backend_class(registry: Registry, table: dict[str, Any]) -> Any:
    """The class the ``[backend]`` table names, or None when it cannot be loaded (that problem is reported once,
    with the component)."""
    name = table.get("type")
    if isinstance(name, str) and name in registry:
        try:
            return registry.get(name)
        except LmixError:
            return None
    return None


def _prepare_backend_table(registry: Registry, table: dict[str, Any], bases: _Bases) -> None:
    """Resolve the backend's model paths (the Config fields it declares: ``TrainerBackend.model_field`` and
    ``references_field``) and read keys of earlier lmix versions under their current names
    (:func:`lmix_core.backend_settings.upgrade_renamed`: saved run recipes hold them)."""
    cls = _backend_class(registry, table)
    if cls is None:
        _resolve_backend_paths(table, bases)
        return
    from lmix_core.backend_settings import upgrade_renamed

    upgraded = upgrade_renamed(table, cls.Config)
    table.clear()
    table.update(upgraded)
    _resolve_backend_paths(table, bases, (cls.model_field, cls.references_field))


def _resolve_backend_paths(
    table: dict[str, Any], bases: _Bases, fields: tuple[str, ...] = BACKEND_PATH_FIELDS
) -> None:
    """The backend's model and references (``backend.model``/``backend.references`` unless the backend declares
    other fields): relative values that start with ``./``/``../`` or exist."""

    def fix(value: Any, key: str) -> Any:
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            return value
        base = bases.for_key(key)
        explicit = value.startswith(("./", "../", ".\\", "..\\", "~")) or value in (".", "..")
        if explicit or (base / value).exists():
            return _absolute(value, base)
        return value

    for name in fields:
        if name not in table:
            continue
        value = table[name]
        if isinstance(value, list):
            table[name] = [fix(v, f"backend.{name}[{i}]") for i, v in enumerate(value)]
        else:
            table[name] = fix(value, f"backend.{name}")


# -- validation --------------------------------------------------------------------------------------------------


def _import_target(target: str) -> type:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _close(word: str, options: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.6)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _split_message(exc: Exception) -> tuple[str, str]:
    lines = str(exc).splitlines()
    return lines[0], "\n".join(line.strip() for line in lines[1:])


def _component(
    registry: Registry,
    table: Any,
    *,
    slot: str,
    default: str | None,
    reserved: Sequence[str],
    bases: _Bases,
) -> tuple[tuple[type, Entry, dict[str, Any], Any] | None, list[Problem]]:
    kind = registry.kind.name
    if table is None:
        if default is None:
            return None, [
                Problem(
                    slot,
                    f"missing table [{slot}]",
                    f'add [{slot}] with type = "<name>".\n' + registry.suggest(""),
                )
            ]
        table = {}
    if not isinstance(table, dict):
        return None, [
            Problem(
                slot,
                f"must be a table naming a {kind} (got {table!r})",
                f'write [{slot}] with type = "<name>"',
            )
        ]
    name = table.get("type", default)
    defaulted = "type" not in table
    if name is None:
        return None, [Problem(f"{slot}.type", f"missing: name the {kind} to use", registry.suggest(""))]
    if not isinstance(name, str):
        return None, [
            Problem(f"{slot}.type", f"must be a string naming a {kind} (got {name!r})", registry.suggest(""))
        ]
    try:
        cls = registry.get(name)
        entry = registry.entry(name)
    except UnknownComponentError:
        return None, [Problem(f"{slot}.type", f"no {kind} named {name!r}", registry.suggest(name))]
    except LmixError as exc:  # a duplicate, a plugin that fails to import, a class that breaks the interface
        message, hint = _split_message(exc)
        return None, [Problem(f"{slot}.type", message, hint)]
    params = {k: v for k, v in table.items() if k not in ("type", *reserved)}
    _resolve_paths(params, cls.Config, slot, bases)
    owner = f"{kind} {name!r}" + (" (the default type)" if defaulted else "")
    config, problems = structure(cls.Config, params, path=slot, owner=owner)
    return (cls, entry, params, config), problems


def _weight(table: Any, slot: str) -> tuple[float, list[Problem]]:
    if not isinstance(table, dict) or "weight" not in table:
        return 1.0, []
    w = table["weight"]
    if isinstance(w, bool) or not isinstance(w, int | float):
        return 1.0, [Problem(f"{slot}.weight", f"'weight' must be a number (got {w!r})")]
    if not math.isfinite(w):
        return 1.0, [Problem(f"{slot}.weight", f"'weight' must be finite (got {w!r})")]
    return float(w), []


def load_recipe(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    *,
    registries: Mapping[str, Registry] | None = None,
) -> Recipe:
    """Read, override, resolve and validate a recipe.

    Args:
        path: the TOML file, or a shipped recipe's ``set:name`` (``demo:grpo``, :mod:`lmix_core.shipped_recipes`),
            whose relative paths then resolve against the working directory.
        overrides: ``KEY=VALUE`` strings applied after reading (see :func:`parse_override`).
        registries: registries by kind; defaults to :data:`lmix_core.registries.REGISTRIES` (tests pass fresh
            ones).

    Returns:
        The validated :class:`Recipe`; nothing is built.

    Raises:
        RecipeError: every problem found (missing file, bad TOML, bad overrides, unknown keys or types, wrong
            types, out-of-range values, missing tables, plugins that fail to import), at once.
    """
    label = str(path)
    if isinstance(path, str) and is_shipped_name(path) and not Path(path).exists():
        resource = shipped_recipe(path)
        data = _parse(resource.read_text(encoding="utf-8"), label)
        source, recipe_dir = Path(str(resource)), Path.cwd()
    else:
        source = Path(path)
        data = _read(source, label)
        recipe_dir = source.resolve().parent
    return _validate(
        data, [], overrides, label=label, source=source, recipe_dir=recipe_dir, registries=registries
    )


def recipe_from_mapping(
    mapping: Mapping[str, Any],
    overrides: Iterable[str] = (),
    *,
    source: str = "<mapping>",
    base_dir: str | os.PathLike[str] | None = None,
    registries: Mapping[str, Registry] | None = None,
) -> Recipe:
    """Validate a recipe given as a Python mapping: the checks and the :class:`RecipeError` of :func:`load_recipe`.

    The mapping has the TOML file's shape: tables are mappings, arrays of tables are sequences of mappings, and
    values are TOML values (strings, numbers, booleans, dates and times, arrays and tables of them). Two
    conveniences: a :class:`~pathlib.PurePath` value is taken as its string, a tuple as an array. Anything else
    (``None``, objects, non-string keys) is reported as a problem at its path, with the others.

    Example::

        from lmix_core.shipped_recipes import shipped_mapping

        data = shipped_mapping("demo:grpo_logit_average")
        data["combiner"]["alpha"] = 0.7
        data["data"]["train"] = Path("my/train.jsonl")
        recipe = recipe_from_mapping(data, source="my experiment")

    Args:
        mapping: the recipe's tables; not modified.
        overrides: ``KEY=VALUE`` strings applied after it, as on the command line.
        source: what error messages call the recipe (its ``Recipe.source`` is ``Path(source)``).
        base_dir: where relative paths resolve; ``None`` means the working directory.
        registries: as for :func:`load_recipe`.

    Raises:
        RecipeError: every problem found, at once.
    """
    problems: list[Problem] = []
    data = _plain(mapping, "", problems)
    recipe_dir = Path.cwd() if base_dir is None else Path(base_dir).resolve()
    return _validate(
        data,
        problems,
        overrides,
        label=source,
        source=Path(source),
        recipe_dir=recipe_dir,
        registries=registries,
    )


_NOT_TOML = object()


def _plain(value: Any, path: str, problems: list[Problem]) -> Any:
    """``value`` as plain TOML data (dicts, lists, scalars); values TOML cannot hold become problems."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(Problem(path, f"keys must be strings (got {key!r})"))
                continue
            plain = _plain(item, f"{path}.{key}" if path else key, problems)
            if plain is not _NOT_TOML:
                out[key] = plain
        return out
    if isinstance(value, list | tuple):
        items = [_plain(item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
        return [item for item in items if item is not _NOT_TOML]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, str | bool | int | float | datetime.date | datetime.time):
        return value
    problems.append(
        Problem(
            path,
            f"is not a TOML value (got {value!r})",
            "use strings, numbers, booleans, dates, arrays and tables; leave a key out for its default",
        )
    )
    return _NOT_TOML


def _validate(
    data: dict[str, Any],
    problems: list[Problem],
    overrides: Iterable[str],
    *,
    label: str,
    source: Path,
    recipe_dir: Path,
    registries: Mapping[str, Registry] | None,
) -> Recipe:
    """Override, resolve and validate recipe data read from a file or given as a mapping (modified in place)."""
    if registries is None:
        from lmix_core.registries import REGISTRIES

        registries = REGISTRIES
    more, overridden = apply_overrides(data, overrides)
    problems = [*problems, *more]
    bases = _Bases(recipe_dir, Path.cwd(), tuple(overridden))
    raw = copy.deepcopy(data)

    schema = data.get("schema")
    if schema is None:
        problems.append(Problem("schema", "missing", f"start the recipe with `schema = {SCHEMA}`"))
    elif isinstance(schema, bool) or not isinstance(schema, int):
        problems.append(
            Problem("schema", f"must be an integer (got {schema!r})", f"write `schema = {SCHEMA}`")
        )
    elif schema != SCHEMA:
        hint = (
            "the recipe was written for a newer lmix: upgrade lmix"
            if schema > SCHEMA
            else f"rewrite it for schema {SCHEMA} (docs/recipes.md)"
        )
        problems.append(Problem("schema", f"this lmix reads schema {SCHEMA} recipes (got {schema})", hint))
        raise RecipeError(label, problems)  # the rest may mean something else in another schema
    for key, value in data.items():
        if key not in TOP_LEVEL:
            if key == "reward":
                hint = "did you mean 'rewards'? (an array of tables: [[rewards]])"
            else:
                hint = _close(key, TOP_LEVEL) or f"top-level keys: {', '.join(TOP_LEVEL)}"
            what = f"unknown table [{key}]" if isinstance(value, dict) else f"unknown key {key!r}"
            problems.append(Problem(key, what, hint))

    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append(Problem("description", f"must be a string (got {description!r})"))
        description = ""

    parts: dict[str, Any] = {}
    for slot in SLOTS:
        table = raw.get(slot.key)
        if isinstance(table, dict) and slot.kind == "backend":
            _prepare_backend_table(registries["backend"], table, bases)
        found, probs = _component(
            registries[slot.kind], table, slot=slot.key, default=slot.default, reserved=(), bases=bases
        )
        problems += probs
        if found is not None and not probs:
            cls, entry, params, config = found
            parts[slot.key] = ComponentSpec(slot.kind, entry.name, cls, config, 1.0, entry, slot.key)
        if isinstance(table, dict) and found is not None:
            table.update(found[2])  # keep the resolved paths in `raw`

    rewards: list[ComponentSpec] = []
    tables = raw.get(REWARDS)
    reward_registry = registries["reward"]
    if tables is None or tables == []:
        problems.append(
            Problem(
                REWARDS,
                "missing: add at least one [[rewards]] table",
                'e.g. [[rewards]] type = "math"\n' + reward_registry.suggest(""),
            )
        )
    elif isinstance(tables, dict):
        problems.append(
            Problem(
                REWARDS, "must be an array of tables", "write [[rewards]] (double brackets), one per reward"
            )
        )
    elif not isinstance(tables, list):
        problems.append(
            Problem(REWARDS, f"must be an array of tables (got {tables!r})", "write [[rewards]] tables")
        )
    else:
        for i, table in enumerate(tables):
            reward_slot = f"{REWARDS}[{i}]"
            weight, probs = _weight(table, reward_slot)
            found, more = _component(
                reward_registry, table, slot=reward_slot, default=None, reserved=("weight",), bases=bases
            )
            probs += more
            problems += probs
            if found is not None and not probs:
                cls, entry, params, config = found
                rewards.append(ComponentSpec("reward", entry.name, cls, config, weight, entry, reward_slot))
            if isinstance(table, dict) and found is not None:
                table.update(found[2])

    settings: dict[str, Any] = {}
    for key, target in SETTINGS.items():
        try:
            cls = _import_target(target)
        except Exception as exc:
            problems.append(
                Problem(key, f"cannot check [{key}]: {target} failed to import: {type(exc).__name__}: {exc}")
            )
            continue
        table = raw.get(key)
        if table is None:
            config, probs = structure(cls, {}, path=key, owner=f"[{key}]")
            if key in REQUIRED_SETTINGS or probs:
                required = [n for n, f in _init_fields(cls).items() if f.default is attrs.NOTHING]
                hint = f"its required fields: {', '.join(required)}" if required else ""
                problems.append(Problem(key, f"missing table [{key}]", hint))
                continue
        elif not isinstance(table, dict):
            problems.append(
                Problem(key, f"must be a table (got {table!r})", f"write [{key}] with its fields below")
            )
            continue
        else:
            _resolve_paths(table, cls, key, bases, names=DATA_PATH_FIELDS if key == "data" else ())
            config, probs = structure(cls, table, path=key, owner=f"[{key}]")
        problems += probs
        if not probs:
            settings[key] = config

    if problems:
        raise RecipeError(label, problems)
    return Recipe(
        source=source,
        schema=SCHEMA,
        description=description,
        raw=raw,
        rewards=tuple(rewards),
        **parts,
        **settings,
    )


# -- TOML writer -------------------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


def _toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            raise ValueError(f"TOML strings cannot hold the lone surrogate {ch!r}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys must be strings (got {key!r})")
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    import datetime

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, PurePath):
        return _toml_string(str(value))
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        raise TypeError("TOML has no null: leave the key out")
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) > 0 and all(isinstance(v, Mapping) for v in value)


def _emit_table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        sub = [*path, _toml_key(key)]
        if isinstance(value, Mapping):
            lines += ["", f"[{'.'.join(sub)}]"]
            _emit_table(value, sub, lines)
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{'.'.join(sub)}]]"]
                _emit_table(item, sub, lines)


def dump_toml(data: Mapping[str, Any]) -> str:
    """Write a dict as TOML: tables as ``[a.b]``, non-empty arrays of tables as ``[[a]]``, the rest inline.

    Supports strings, integers, floats (``nan``/``inf`` included), booleans, dates and times, arrays and tables;
    ``None`` raises ``TypeError`` (TOML has no null). ``tomllib.loads(dump_toml(d)) == d`` for such data.
    """
    lines: list[str] = []
    _emit_table(data, [], lines)
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines) + "\n"


__all__ = [
    "REWARDS",
    "SCHEMA",
    "SETTINGS",
    "SLOTS",
    "ComponentSpec",
    "OverrideError",
    "Recipe",
    "Slot",
    "apply_overrides",
    "dump_toml",
    "load_recipe",
    "merged",
    "parse_override",
    "recipe_from_mapping",
]
