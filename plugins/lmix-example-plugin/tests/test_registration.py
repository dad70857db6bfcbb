"""The plugin registers through entry points like any third party and shows its provenance."""

from __future__ import annotations

import importlib.metadata as md
import json

from lmix_core import registries
from lmix_core.cli import main
from lmix_core.registries import COMBINER, REWARD
from lmix_core.registry import Registry
from lmix_example.countdown import Countdown
from lmix_example.entropy_gated import EntropyGated

DIST = "lmix-example-plugin"


def test_registry_entries_name_the_distribution_and_version():
    """countdown and entropy_gated are provided by lmix-example-plugin at its installed version (0.2.0)."""
    assert md.version(DIST) == "0.2.0"
    for registry, name, cls in [
        (Registry(REWARD), "countdown", Countdown),
        (Registry(COMBINER), "entropy_gated", EntropyGated),
    ]:
        entry = registry.entry(name)
        assert (entry.dist, entry.version) == (DIST, "0.2.0")
        assert registry.get(name) is cls


def test_lmix_components_lists_the_plugin(capsys):
    """`lmix components --json` shows both components with the plugin's distribution and version."""
    assert main(["components", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = {(kind, r["name"]): r for kind, kind_rows in listing.items() for r in kind_rows}
    for key in [("reward", "countdown"), ("combiner", "entropy_gated")]:
        assert (rows[key]["distribution"], rows[key]["version"]) == (DIST, "0.2.0")


def test_autoload_switches_hide_the_plugin(monkeypatch):
    """LMIX_PLUGIN_AUTOLOAD=0 hides the plugin; an LMIX_PLUGINS allow-list without it does too."""
    monkeypatch.setenv("LMIX_PLUGIN_AUTOLOAD", "0")
    assert "countdown" not in Registry(REWARD).names()
    assert "math" in Registry(REWARD).names()  # first-party components stay
    monkeypatch.delenv("LMIX_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("LMIX_PLUGINS", "some-other-plugin")
    assert "countdown" not in Registry(REWARD).names()
    monkeypatch.setenv("LMIX_PLUGINS", DIST)
    assert "countdown" in Registry(REWARD).names()


def test_module_level_registries_see_the_plugin():
    """The registries the rest of lmix uses include the plugin's names."""
    assert "countdown" in registries.rewards and "entropy_gated" in registries.combiners
