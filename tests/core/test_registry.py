"""The entry-point registry, tested against real ``*.dist-info`` folders on ``sys.path`` (nothing mocked)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lmix_core.errors import (
    ComponentTypeError,
    DuplicateComponentError,
    LmixError,
    PluginLoadError,
    UnknownComponentError,
)
from lmix_core.registries import BACKEND, REWARD
from lmix_core.registry import Entry, Kind, Registry

from .distinfo import write_dist

GROUP = "lmixtest_reg.widgets"
WIDGET = Kind("widget", GROUP, "lmt_iface:Widget")

IFACE = '''
"""A light test interface (no torch)."""
import abc


class Widget(abc.ABC):
    def __init__(self, config):
        self.config = config

    @abc.abstractmethod
    def spin(self):
        """Spin."""
'''

GOOD = '''
"""Well-formed widgets."""
import typing

import attrs

from lmt_iface import Widget


@typing.final
class Spin(Widget):
    """Spins at a speed."""

    @attrs.frozen(kw_only=True)
    class Config:
        speed: float = 1.0

    def spin(self):
        return self.config.speed


@typing.final
class Wobble(Widget):
    """Wobbles."""

    @attrs.frozen(kw_only=True)
    class Config:
        amount: int = 2

    def spin(self):
        return self.config.amount
'''

BAD = '''
"""Widgets that break the contract in every way the registry checks."""
import attrs

from lmt_iface import Widget


class NotAWidget:
    @attrs.frozen
    class Config:
        pass


def a_function():
    return 1


class Abstract(Widget):
    @attrs.frozen
    class Config:
        pass


class NoConfig(Widget):
    def spin(self):
        return 0


class PlainConfig(Widget):
    class Config:
        speed = 1.0

    def spin(self):
        return 0


class TypeField(Widget):
    @attrs.frozen
    class Config:
        type: str = "x"

    def spin(self):
        return 0
'''


def _base(site: Path) -> None:
    """The interface module and a distribution ``lmix-acme 1.2.3`` offering ``spin`` and ``wobble``."""
    (site / "lmt_iface.py").write_text(IFACE)
    write_dist(
        site,
        "lmix-acme",
        "1.2.3",
        {GROUP: {"spin": "lmt_acme.good:Spin", "wobble": "lmt_acme.good:Wobble"}},
        {"lmt_acme.good": GOOD},
    )


def test_discovery_lists_entries_with_provenance(site):
    """A dist-info's entry points become entries naming the distribution, its version and the target."""
    _base(site)
    reg = Registry(WIDGET)
    assert reg.names() == ["spin", "wobble"]
    assert reg.entries()[0] == Entry(WIDGET, "spin", "lmt_acme.good:Spin", "lmix-acme", "1.2.3")
    assert reg.entry("wobble").provider == "lmix-acme 1.2.3"
    assert "spin" in reg and "nope" not in reg
    assert reg.get("spin").Config().speed == 1.0


def test_scanning_imports_nothing(site):
    """Listing, membership and suggestions never import a component module; ``get`` does."""
    _base(site)
    reg = Registry(WIDGET)
    reg.entries()
    reg.names()
    assert "spin" in reg
    reg.unknown_message("spni")
    assert "lmt_acme.good" not in sys.modules
    assert "lmt_iface" not in sys.modules
    reg.get("spin")
    assert "lmt_acme.good" in sys.modules


def test_rescan_is_idempotent(site, tmp_path, monkeypatch):
    """Scanning twice, refreshing, or seeing one distribution in two sys.path entries is not a collision."""
    _base(site)
    twin = tmp_path / "twin"
    write_dist(twin, "lmix-acme", "1.2.3", {GROUP: {"spin": "lmt_acme.good:Spin"}})
    monkeypatch.syspath_prepend(str(twin))
    reg = Registry(WIDGET)
    first = reg.entries()
    assert reg.entries() == first
    reg.refresh()
    assert reg.entries() == first
    assert reg.conflicts() == {}
    assert reg.get("spin") is reg.get("spin")


def test_same_name_from_two_distributions_names_both(site):
    """A name offered by two distributions raises DuplicateComponentError naming both; other names still work."""
    _base(site)
    write_dist(site, "lmix-rival", "0.9", {GROUP: {"spin": "lmt_rival:Spin"}}, {"lmt_rival": GOOD})
    reg = Registry(WIDGET)
    with pytest.raises(DuplicateComponentError) as info:
        reg.get("spin")
    message = str(info.value)
    assert "registered twice" in message
    assert "lmix-acme 1.2.3" in message and "lmix-rival 0.9" in message
    assert {e.dist for e in reg.conflicts()["spin"]} == {"lmix-acme", "lmix-rival"}
    assert "spin" not in reg
    assert "spin" in reg.problems()
    assert reg.get("wobble").__name__ == "Wobble"


def test_plugin_that_fails_to_import_names_dist_version_entry_point(site):
    """An import failure becomes PluginLoadError with distribution, version, entry point and cause; others work."""
    _base(site)
    broken = "import lmt_dependency_nobody_installed\n"
    write_dist(site, "lmix-broken", "0.4.1", {GROUP: {"crash": "lmt_broken:Crash"}}, {"lmt_broken": broken})
    reg = Registry(WIDGET)
    with pytest.raises(PluginLoadError) as info:
        reg.get("crash")
    message = str(info.value)
    assert "lmix-broken 0.4.1" in message
    assert "'lmt_broken:Crash'" in message
    assert "ModuleNotFoundError" in message and "lmt_dependency_nobody_installed" in message
    assert "LMIX_PLUGINS" in message  # the way out for a third-party plugin
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert isinstance(info.value, ImportError) and isinstance(info.value, LmixError)
    assert reg.get("spin").__name__ == "Spin"
    assert reg.check("crash") == message and reg.check("spin") is None


def test_import_time_exception_and_missing_attribute_are_load_errors(site):
    """A module that raises at import, or lacks the named class, is a PluginLoadError too."""
    _base(site)
    write_dist(
        site,
        "lmix-odd",
        "1.0",
        {GROUP: {"boom": "lmt_odd:Boom", "ghost": "lmt_acme.good:Ghost"}},
        {"lmt_odd": "raise RuntimeError('boom at import')\n"},
    )
    reg = Registry(WIDGET)
    with pytest.raises(PluginLoadError, match="RuntimeError: boom at import"):
        reg.get("boom")
    with pytest.raises(PluginLoadError, match="AttributeError"):
        reg.get("ghost")


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("NotAWidget", "which does not subclass lmt_iface.Widget"),
        ("a_function", "which does not subclass lmt_iface.Widget"),
        ("Abstract", "is abstract: it does not implement spin"),
        ("NoConfig", "has no attrs `Config` class"),
        ("PlainConfig", "has no attrs `Config` class"),
        ("TypeField", "Config field named 'type'"),
    ],
)
def test_contract_violations_are_component_type_errors(site, target, fragment):
    """Wrong base class, abstract class, missing or non-attrs Config, a ``type`` field: each a clear error."""
    _base(site)
    write_dist(site, "lmix-bad", "2.0", {GROUP: {"bad": f"lmt_bad:{target}"}}, {"lmt_bad": BAD})
    reg = Registry(WIDGET)
    with pytest.raises(ComponentTypeError) as info:
        reg.get("bad")
    message = str(info.value)
    assert fragment in message
    assert f"'lmt_bad:{target}'" in message and "lmix-bad 2.0" in message
    assert reg.get("spin").__name__ == "Spin"


def test_unknown_name_suggests_and_lists_providers(site):
    """An unknown name gets "did you mean", every registered name with its provider, and where plugins come from."""
    _base(site)
    reg = Registry(WIDGET)
    with pytest.raises(UnknownComponentError) as info:
        reg.get("spni")
    message = str(info.value)
    assert message.splitlines()[0] == "no widget named 'spni'."
    assert "Did you mean: 'spin'?" in message
    assert "spin (lmix-acme 1.2.3), wobble (lmix-acme 1.2.3)" in message
    assert GROUP in message
    assert not isinstance(info.value, KeyError)  # KeyError would quote the message and escape its newlines
    assert "Did you mean" not in reg.suggest("zzzzzz")
    assert reg.suggest("spni") == "\n".join(message.splitlines()[1:])


def test_allow_list_keeps_only_named_third_party_distributions(site, monkeypatch):
    """``LMIX_PLUGINS`` keeps the listed third-party distributions (names normalised), hides the rest."""
    _base(site)
    write_dist(site, "lmix-other", "0.1", {GROUP: {"twirl": "lmt_other:Twirl"}})
    monkeypatch.setenv("LMIX_PLUGINS", "LMIX_Other")
    assert Registry(WIDGET).names() == ["twirl"]
    monkeypatch.setenv("LMIX_PLUGINS", "lmix-acme, lmix-other")
    assert Registry(WIDGET).names() == ["spin", "twirl", "wobble"]
    monkeypatch.setenv("LMIX_PLUGINS", "")
    assert Registry(WIDGET).names() == []


def test_allow_list_resolves_a_collision(site, monkeypatch):
    """Leaving one of two colliding distributions out of ``LMIX_PLUGINS`` makes the name usable again."""
    _base(site)
    write_dist(site, "lmix-rival", "0.9", {GROUP: {"spin": "lmt_rival:Spin"}}, {"lmt_rival": GOOD})
    monkeypatch.setenv("LMIX_PLUGINS", "lmix-acme")
    assert Registry(WIDGET).get("spin").__module__ == "lmt_acme.good"


def test_autoload_off_hides_third_party_but_keeps_first_party(site, monkeypatch):
    """``LMIX_PLUGIN_AUTOLOAD=0`` hides third-party distributions; lmix, lmix-hf and lmix-megatron stay."""
    write_dist(
        site, "lmix-toy-backend", "0.1", {BACKEND.group: {"toy": "lmt_toy:Toy"}, REWARD.group: {"t": "m:C"}}
    )
    assert "toy" in Registry(BACKEND).names()
    monkeypatch.setenv("LMIX_PLUGIN_AUTOLOAD", "0")
    backends = Registry(BACKEND)
    assert "toy" not in backends.names()
    assert {"hf", "megatron"} <= set(backends.names())
    assert {backends.entry("hf").dist, backends.entry("megatron").dist} == {"lmix-hf", "lmix-megatron"}
    rewards = Registry(REWARD)
    assert "math" in rewards.names() and rewards.entry("math").dist == "lmix"
    assert "countdown" not in rewards.names()  # the example plugin is third-party
    monkeypatch.setenv("LMIX_PLUGINS", "lmix-toy-backend")
    monkeypatch.setenv("LMIX_PLUGIN_AUTOLOAD", "0")
    assert "toy" not in Registry(BACKEND).names()  # autoload off wins over the allow-list


@pytest.mark.parametrize(
    ("ep_name", "value", "fragment"),
    [
        ("Spin-Fast", "lmt_acme.good:Spin", "not lower_snake_case"),
        ("2fast", "lmt_acme.good:Spin", "not lower_snake_case"),
        ("fast", "lmt_acme.good", "malformed value"),
        ("quick", "lmt acme:Spin", "malformed value"),
    ],
)
def test_badly_formed_entry_points_are_reported_not_fatal(site, ep_name, value, fragment):
    """Bad names or values are kept out of the listing, raise ComponentTypeError on lookup, and break nothing else."""
    _base(site)
    write_dist(site, "lmix-sloppy", "0.0.1", {GROUP: {ep_name: value}})
    reg = Registry(WIDGET)
    assert reg.names() == ["spin", "wobble"]
    with pytest.raises(ComponentTypeError, match=fragment) as info:
        reg.get(ep_name)
    assert "lmix-sloppy 0.0.1" in str(info.value)
    assert fragment in reg.problems()[ep_name]
    assert reg.get("wobble").__name__ == "Wobble"


def test_real_registries_list_every_first_party_entry_point():
    """The module-level registries see every built-in entry point declared in the three first-party pyprojects."""
    import tomllib

    from lmix_core.registries import REGISTRIES

    root = Path(__file__).resolve().parents[2]
    declared: dict[str, set[str]] = {}
    for pyproject in (root / "pyproject.toml", *sorted(root.glob("backends/*/pyproject.toml"))):
        groups = tomllib.loads(pyproject.read_text())["project"].get("entry-points", {})
        for group, eps in groups.items():
            if group.startswith("lmix."):
                declared.setdefault(group, set()).update(eps)
    for registry in REGISTRIES.values():
        assert declared[registry.kind.group] <= set(registry.names()), registry.kind.group
