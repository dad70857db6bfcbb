"""Fixtures for core tests: a fresh ``sys.path`` entry for real test distributions, and fake-component registries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lmix_core.registry import Registry

from .distinfo import fresh_registries, write_fakes


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty folder at the front of ``sys.path``; modules imported from it are forgotten afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    for var in ("LMIX_PLUGINS", "LMIX_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    yield root
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]


@pytest.fixture(scope="session")
def fakes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake distribution ``lmix-fakes 0.3`` (groups ``lmixtest.*``), written once per session."""
    root = tmp_path_factory.mktemp("fakes-site")
    write_fakes(root)
    return root


@pytest.fixture
def registries(fakes_root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Registry]:
    """Fresh registries over the ``lmixtest.*`` groups, where ``lmix-fakes`` registers every kind."""
    monkeypatch.syspath_prepend(str(fakes_root))
    for var in ("LMIX_PLUGINS", "LMIX_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    return fresh_registries("lmixtest")
