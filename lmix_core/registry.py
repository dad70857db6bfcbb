"""Entry-point registries: one per component kind, found through ``importlib.metadata``.

Discovery reads entry-point metadata only; nothing is imported until a component is asked for by name
(lm-evaluation-harness's lazy placeholders). Built-in components register through the same entry-point groups as
third-party plugins (``[project.entry-points."lmix.combiners"]`` in ``pyproject.toml``). The standard library's
``importlib.metadata`` does the discovery; the old ``entrypoints`` package is in maintenance-only mode and
deprecated in its favour, and ``pkg_resources`` is not used either.

Checks:
    at scan time (no import): the name is ``lower_snake_case``, the value is ``module:Class``, and no two *different*
    distributions offer the same name (re-scanning, or the same distribution seen twice, is not a conflict);
    at load time: the import succeeds (else :class:`PluginLoadError` naming the distribution, its version and the
    entry point), the object is a concrete subclass of the kind's interface with an attrs ``Config`` that has no
    field named ``type`` (else :class:`ComponentTypeError`).

A broken entry only breaks lookups of its own name: every other component of the kind stays usable.

Environment switches (read at each scan):
    ``LMIX_PLUGIN_AUTOLOAD=0``   ignore every third-party distribution (first-party ones stay).
    ``LMIX_PLUGINS=a,b``         an allow-list of third-party distributions; the others are ignored.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import os
import re
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import attrs

from lmix_core.errors import (
    ComponentTypeError,
    DuplicateComponentError,
    LmixError,
    PluginLoadError,
    UnknownComponentError,
)

T = TypeVar("T")

#: Distributions that ship with lmix itself; the plugin switches never hide them.
FIRST_PARTY = frozenset({"lmix", "lmix-hf", "lmix-megatron"})
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
VALUE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _canonical(dist: str) -> str:
    """PEP 503 normalised distribution name (``LMix_Example.plugin`` → ``lmix-example-plugin``)."""
    return re.sub(r"[-_.]+", "-", dist).lower()


_FIRST_PARTY_CANONICAL = frozenset(_canonical(d) for d in FIRST_PARTY)


def is_first_party(dist: str) -> bool:
    """Whether ``dist`` ships with lmix (never hidden by ``LMIX_PLUGINS`` / ``LMIX_PLUGIN_AUTOLOAD``)."""
    return _canonical(dist) in _FIRST_PARTY_CANONICAL


@attrs.frozen
class Kind:
    """One component kind: its recipe word, entry-point group and interface.

    Attributes:
        name: singular word used in messages and the CLI, e.g. ``combiner``.
        group: entry-point group, e.g. ``lmix.combiners``.
        interface: ``module:Class`` of the abstract interface, imported only when a component is loaded.
    """

    name: str
    group: str
    interface: str

    @property
    def plural(self) -> str:
        """The group's second part, e.g. ``combiners`` (also the name of the kind's docs page)."""
        return self.group.split(".", 1)[1]

    def interface_class(self) -> type:
        """Import and return the interface class."""
        module, _, qual = self.interface.partition(":")
        obj: Any = __import__(module, fromlist=[qual])
        for part in qual.split("."):
            obj = getattr(obj, part)
        return obj


@attrs.frozen
class Entry:
    """A registered component before it is imported.

    Attributes:
        kind: the component kind.
        name: registered name.
        value: entry-point target, ``module:Class``.
        dist: providing distribution's name.
        version: providing distribution's version.
    """

    kind: Kind
    name: str
    value: str
    dist: str
    version: str

    @property
    def provider(self) -> str:
        """``<distribution> <version>``, e.g. ``lmix 0.1.0``."""
        return f"{self.dist} {self.version}"

    @property
    def module(self) -> str:
        """The module the entry point imports."""
        return self.value.partition(":")[0]

    @property
    def first_party(self) -> bool:
        """Whether the providing distribution ships with lmix."""
        return is_first_party(self.dist)

    def describe(self) -> str:
        """``combiner 'x' (entry point 'm:C' from dist 1.0)``: the start of every message about this entry."""
        return f"{self.kind.name} {self.name!r} (entry point {self.value!r} from {self.provider})"


def _plugin_filter() -> tuple[bool, frozenset[str] | None]:
    autoload = os.environ.get("LMIX_PLUGIN_AUTOLOAD", "1").strip().lower() not in {"0", "false", "no", "off"}
    raw = os.environ.get("LMIX_PLUGINS")
    allow = None if raw is None else frozenset(_canonical(d.strip()) for d in raw.split(",") if d.strip())
    return autoload, allow


class Registry(Generic[T]):
    """The components of one kind, discovered lazily from an entry-point group.

    Scanning is idempotent and cached per ``Registry`` object; tests build fresh objects instead of mutating the
    module-level ones. A name offered by two distributions, or a malformed entry, is kept aside: looking it up
    raises, listing shows it (:meth:`problems`), and every other name works.
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] | None = None
        self._conflicts: dict[str, list[Entry]] = {}
        self._invalid: dict[str, str] = {}
        self._loaded: dict[str, type[T]] = {}

    def __repr__(self) -> str:
        return f"Registry({self.kind.name!r}, group={self.kind.group!r})"

    # -- discovery -------------------------------------------------------------------------------------------
    def _scan(self) -> dict[str, Entry]:
        if self._entries is not None:
            return self._entries
        autoload, allow = _plugin_filter()
        entries: dict[str, Entry] = {}
        conflicts: dict[str, list[Entry]] = {}
        invalid: dict[str, str] = {}
        for ep in md.entry_points(group=self.kind.group):
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            version = ep.dist.version if ep.dist is not None else "?"
            if not is_first_party(dist) and (
                not autoload or (allow is not None and _canonical(dist) not in allow)
            ):
                continue
            entry = Entry(self.kind, ep.name, ep.value, dist, version)
            if not NAME_RE.fullmatch(ep.name):
                conflicts.setdefault(ep.name, []).append(entry)
                invalid[ep.name] = (
                    f"{entry.describe()}\n  has a name that is not lower_snake_case ([a-z][a-z0-9_]*); "
                    f"rename the entry point in {dist}'s metadata."
                )
                continue
            if not VALUE_RE.fullmatch(ep.value):
                conflicts.setdefault(ep.name, []).append(entry)
                invalid[ep.name] = (
                    f"{entry.describe()}\n  has a malformed value; it must read 'package.module:Class'. "
                    f"Fix the entry point in {dist}'s metadata."
                )
                continue
            seen = entries.get(ep.name)
            if seen is None:
                entries[ep.name] = entry
            elif _canonical(seen.dist) != _canonical(dist) and all(
                _canonical(e.dist) != _canonical(dist) for e in conflicts.get(ep.name, ())
            ):
                conflicts.setdefault(ep.name, [seen]).append(entry)
        self._entries, self._conflicts, self._invalid = entries, conflicts, invalid
        return entries

    def refresh(self) -> None:
        """Forget the scan and every loaded class (after installing a plugin in-process)."""
        self._entries, self._conflicts, self._invalid, self._loaded = None, {}, {}, {}

    def entries(self) -> list[Entry]:
        """Every well-formed registered component of this kind, sorted by name, without importing any of them.

        For a name offered twice, the first offer on ``sys.path`` is listed; :meth:`conflicts` has all of them.
        """
        scanned = self._scan()
        return [scanned[k] for k in sorted(scanned)]

    def conflicts(self) -> dict[str, list[Entry]]:
        """Names offered by more than one distribution, or badly formed entries, with every offer."""
        self._scan()
        return {k: list(v) for k, v in self._conflicts.items()}

    def problems(self) -> dict[str, str]:
        """The error message of every name that cannot be looked up (conflicts and malformed entries)."""
        self._scan()
        out = {}
        for name in self._conflicts:
            try:
                self.entry(name)
            except LmixError as exc:
                out[name] = str(exc)
        return out

    def names(self) -> list[str]:
        """Registered names, sorted (conflicting names included; they raise on lookup)."""
        return sorted(self._scan())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._scan() and name not in self._conflicts

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    # -- lookup ----------------------------------------------------------------------------------------------
    def entry(self, name: str) -> Entry:
        """The entry registered as ``name``, without importing it.

        Raises:
            UnknownComponentError: no distribution registers ``name`` (the message has suggestions).
            DuplicateComponentError: two distributions register ``name`` (the message names both).
            ComponentTypeError: the entry point is malformed (bad name or value).
        """
        entries = self._scan()
        if name in self._invalid:
            raise ComponentTypeError(self._invalid[name])
        if name in self._conflicts:
            offers = self._conflicts[name]
            who = " and by ".join(f"{e.provider} ({e.value!r})" for e in offers)
            raise DuplicateComponentError(
                f"{self.kind.name} {name!r} is registered twice: by {who}.\n"
                f"  Uninstall one, or rename one of the entry points in the {self.kind.group!r} group."
            )
        if name not in entries:
            raise UnknownComponentError(self.unknown_message(name))
        return entries[name]

    def unknown_message(self, name: object) -> str:
        """``no combiner named 'x'.`` followed by :meth:`suggest`'s lines."""
        return "\n".join([f"no {self.kind.name} named {name!r}.", self.suggest(name)])

    def suggest(self, name: object) -> str:
        """Hint lines for an unknown name: "Did you mean", the registered names with providers, where to look."""
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
        lines = []
        if close:
            lines.append("Did you mean: " + ", ".join(repr(c) for c in close) + "?")
        listing = ", ".join(f"{e.name} ({e.provider})" for e in self.entries()) or "none"
        lines.append(f"Registered {self.kind.plural}: {listing}")
        lines.append(
            f"Third-party {self.kind.plural} are found through the {self.kind.group!r} entry-point group; "
            f"`lmix components {self.kind.name}` lists them."
        )
        return "\n".join(lines)

    def get(self, name: str) -> type[T]:
        """Import and check the class registered as ``name``.

        Raises:
            UnknownComponentError, DuplicateComponentError: see :meth:`entry`.
            PluginLoadError: importing the entry point failed (names distribution, version and entry point).
            ComponentTypeError: the object is not a concrete subclass of the interface with a usable ``Config``.
        """
        if name in self._loaded:
            return self._loaded[name]
        entry = self.entry(name)
        try:
            obj = md.EntryPoint(entry.name, entry.value, self.kind.group).load()
        except Exception as exc:
            if entry.first_party:
                fix = f"It ships with lmix ({entry.dist}): reinstall with its dependencies (the README's set-up)."
            else:
                fix = (
                    f"To skip this distribution: uninstall {entry.dist}, or set LMIX_PLUGINS to the "
                    f"third-party distributions you want (without {entry.dist})."
                )
            raise PluginLoadError(
                f"{entry.describe()} failed to import: {type(exc).__name__}: {exc}\n"
                f"  Only recipes that name {entry.name!r} are affected. {fix}"
            ) from exc
        self._check(entry, obj)
        self._loaded[name] = obj
        return obj

    def check(self, name: str) -> str | None:
        """The error message :meth:`get` would raise for ``name``, or None if it loads (imports it)."""
        try:
            self.get(name)
        except LmixError as exc:
            return str(exc)
        return None

    def _check(self, entry: Entry, obj: object) -> None:
        interface = self.kind.interface_class()
        where = entry.describe()
        if not (inspect.isclass(obj) and issubclass(obj, interface)):
            raise ComponentTypeError(
                f"{where}\n  is {obj!r}, which does not subclass {interface.__module__}.{interface.__qualname__}."
            )
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
            raise ComponentTypeError(f"{where}\n  is abstract: it does not implement {missing}.")
        config = obj.__dict__.get("Config", getattr(obj, "Config", None))
        if not (inspect.isclass(config) and attrs.has(config)):
            raise ComponentTypeError(
                f"{where}\n  has no attrs `Config` class; every component needs one "
                f"(a nested `@attrs.frozen(kw_only=True) class Config`)."
            )
        if any(f.name == "type" for f in attrs.fields(config)):
            raise ComponentTypeError(
                f"{where}\n  declares a Config field named 'type', which recipes reserve for the component's name."
            )
