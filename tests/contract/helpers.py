"""Instances for the contract suites' ``parametrize_with_checks``: every registered name, and non-default configs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmix_core.config import build
from lmix_core.registry import Registry


def defaults(registry: Registry[Any]) -> dict[str, Any]:
    """``name -> instance with the default Config`` for every registered name (built-in or plugin)."""
    return {name: registry.get(name).default() for name in registry.names()}


def variants(registry: Registry[Any], tables: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """``"name-value-value" -> instance`` built from recipe-style tables, through the same ``build`` as recipes."""
    built = {}
    for name, table in tables:
        cls = registry.get(name)
        built["-".join([name, *map(str, table.values())])] = cls(build(cls.Config, dict(table)))
    return built
