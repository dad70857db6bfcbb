"""Entry-point registries: one per component kind, found through ``importlib.metadata``.

Discovery reads entry-point metadata only; nothing is imported until a component is asked for by name
(lm-evaluation-harness's lazy placeholders). Built-in components register through the same entry-point groups as
third-party plugins (``[project.entry-points."lmix.combiners"]`` in ``pyproject.toml``).

Environment switches:
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
    PluginLoadError,
    UnknownComponentError,
)

T = TypeVar("T")

#: Distributions that ship with lmix itself; the plugin switches never hide them.
FIRST_PARTY = frozenset({"lmix", "lmix-hf", "lmix-megatron"})
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


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
        return self.group.split(".", 1)[1]

    def interface_class(self) -> type:
        module, _, qual = self.interface.partition(":")
        obj: Any = __import__(module, fromlist=[qual])
        return getattr(obj, qual)


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
        return f"{self.dist} {self.version}"

    @property
    def module(self) -> str:
        return self.value.partition(":")[0]

    def describe(self) -> str:
        return f"{self.kind.name} {self.name!r} (entry point {self.value!r} from {self.provider})"


def _plugin_filter() -> tuple[bool, frozenset[str] | None]:
    autoload = os.environ.get("LMIX_PLUGIN_AUTOLOAD", "1").strip().lower() not in {"0", "false", "no", "off"}
    raw = os.environ.get("LMIX_PLUGINS")
    allow = None if raw is None else frozenset(_canonical(d) for d in raw.split(",") if d.strip())
    return autoload, allow


class Registry(Generic[T]):
    """The components of one kind, discovered lazily from an entry-point group.

    Scanning is idempotent and cached per ``Registry`` object; tests build fresh objects instead of mutating the
    module-level ones.
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] | None = None
        self._conflicts: dict[str, list[Entry]] = {}
        self._loaded: dict[str, type[T]] = {}

    # -- discovery -------------------------------------------------------------------------------------------
    def _scan(self) -> dict[str, Entry]:
        if self._entries is not None:
            return self._entries
        autoload, allow = _plugin_filter()
        entries: dict[str, Entry] = {}
        conflicts: dict[str, list[Entry]] = {}
        for ep in md.entry_points(group=self.kind.group):
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            version = ep.dist.version if ep.dist is not None else "?"
            first_party = _canonical(dist) in {_canonical(d) for d in FIRST_PARTY}
            if not first_party and (not autoload or (allow is not None and _canonical(dist) not in allow)):
                continue
            entry = Entry(self.kind, ep.name, ep.value, dist, version)
            if not NAME_RE.match(ep.name):
                conflicts.setdefault(ep.name, []).append(entry)
                continue
            seen = entries.get(ep.name)
            if seen is None:
                entries[ep.name] = entry
            elif _canonical(seen.dist) != _canonical(dist):
                conflicts.setdefault(ep.name, [seen]).append(entry)
        self._entries, self._conflicts = entries, conflicts
        return entries

    def refresh(self) -> None:
        """Forget the scan and every loaded class (after installing a plugin in-process)."""
        self._entries, self._conflicts, self._loaded = None, {}, {}

    def entries(self) -> list[Entry]:
        """Every registered component of this kind, sorted by name, without importing any of them."""
        return [self._scan()[k] for k in sorted(self._scan())]

    def conflicts(self) -> dict[str, list[Entry]]:
        """Names offered by more than one distribution, or badly formed names, with every offer."""
        self._scan()
        return dict(self._conflicts)

    def names(self) -> list[str]:
        return sorted(self._scan())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._scan() and name not in self._conflicts

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    # -- lookup ----------------------------------------------------------------------------------------------
    def entry(self, name: str) -> Entry:
        """The entry registered as ``name``; raises with suggestions when there is none."""
        entries = self._scan()
        if name in self._conflicts:
            offers = self._conflicts[name]
            if not NAME_RE.match(name):
                raise ComponentTypeError(
                    f"{self.kind.name} name {name!r} from {offers[0].provider} is not lower_snake_case; "
                    f"rename the entry point in that distribution's metadata"
                )
            who = " and by ".join(e.provider for e in offers)
            raise DuplicateComponentError(
                f"{self.kind.name} {name!r} is registered twice: by {who}.\n  Uninstall one, or rename one."
            )
        if name not in entries:
            raise UnknownComponentError(self.unknown_message(name))
        return entries[name]

    def unknown_message(self, name: object) -> str:
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
        lines = [f"no {self.kind.name} named {name!r}."]
        if close:
            lines.append("Did you mean: " + ", ".join(repr(c) for c in close) + "?")
        listing = ", ".join(f"{e.name} ({e.provider})" for e in self.entries()) or "none"
        lines.append(f"Registered {self.kind.plural}: {listing}")
        lines.append(
            f"Third-party {self.kind.plural} are found through the {self.kind.group!r} entry-point group; "
            f"`lmix components {self.kind.name}` lists them."
        )
        return "\n".join(lines)

    def suggest(self, name: object) -> str:
        """The hint part of :meth:`unknown_message` (everything after the first line)."""
        return "\n".join(self.unknown_message(name).splitlines()[1:])

    def get(self, name: str) -> type[T]:
        """Import and check the class registered as ``name``."""
        if name in self._loaded:
            return self._loaded[name]
        entry = self.entry(name)
        try:
            obj = md.EntryPoint(entry.name, entry.value, self.kind.group).load()
        except Exception as exc:
            raise PluginLoadError(
                f"{entry.describe()} failed to import: {type(exc).__name__}: {exc}\n"
                f"  Only recipes that name {entry.name!r} are affected. "
                f"To skip this plugin entirely: LMIX_PLUGINS=<the ones you want>."
            ) from exc
        self._check(entry, obj)
        self._loaded[name] = obj
        return obj

    def _check(self, entry: Entry, obj: object) -> None:
        interface = self.kind.interface_class()
        where = entry.describe()
        if not (inspect.isclass(obj) and issubclass(obj, interface)):
            raise ComponentTypeError(
                f"{where}\n  is {obj!r}, which does not subclass "
                f"{interface.__module__}.{interface.__qualname__}."
            )
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
            raise ComponentTypeError(f"{where}\n  is abstract: it does not implement {missing}.")
        config = getattr(obj, "Config", None)
        if not (inspect.isclass(config) and attrs.has(config)):
            raise ComponentTypeError(f"{where}\n  has no attrs `Config` class; every component needs one.")
        if any(f.name == "type" for f in attrs.fields(config)):
            raise ComponentTypeError(f"{where}\n  declares a Config field named 'type', which recipes reserve.")
