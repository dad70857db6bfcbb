"""The reference pages keep up with the code: every error class, settings field and CLI option is documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import attrs
import pytest

from lmix_core.cli import build_parser
from lmix_core.config import _init_fields
from lmix_core.recipe import SETTINGS, _import_target

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _error_classes() -> dict[str, str]:
    """``{class name: file}`` for every class deriving (transitively) from LmixError in lmix's own packages."""
    bases: dict[str, tuple[list[str], str]] = {}
    files = [*ROOT.glob("lmix_core/**/*.py"), *ROOT.glob("backends/*/lmix_*/**/*.py")]
    files += ROOT.glob("plugins/*/lmix_*/**/*.py")
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                bases[node.name] = (names, str(path.relative_to(ROOT)))
    found: dict[str, str] = {"LmixError": bases["LmixError"][1]}
    changed = True
    while changed:
        changed = False
        for name, (parents, where) in bases.items():
            if name not in found and any(p in found for p in parents):
                found[name] = where
                changed = True
    return found


ERRORS = _error_classes()


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1 :]
    m = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: m.start()] if m else rest


def test_error_classes_were_found():
    """The scan sees the core errors (so the parametrised check is not vacuous)."""
    assert {"LmixError", "RecipeError", "PluginLoadError", "OverrideError"} <= set(ERRORS)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_is_documented(name):
    """``docs/errors.md`` has a ``## `Name` `` section for every LmixError subclass, with an example message."""
    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    heading = f"## `{name}`"
    assert heading + "\n" in text, f"{name} ({ERRORS[name]}) has no '{heading}' section in docs/errors.md"
    assert "```" in _section(text, heading), f"the {name} section of docs/errors.md shows no example message"


@pytest.mark.parametrize("table", sorted(SETTINGS))
def test_settings_fields_are_documented(table):
    """``docs/recipes.md`` documents every field of every settings table in that table's section."""
    text = (DOCS / "recipes.md").read_text(encoding="utf-8")
    heading = f"### `[{table}]`"
    assert heading + "\n" in text, f"docs/recipes.md has no '{heading}' section"
    section = _section(text, heading)
    cls = _import_target(SETTINGS[table])
    missing = [name for name in _init_fields(cls) if f"`{name}`" not in section]
    assert not missing, f"docs/recipes.md [{table}] does not document {missing}"
    assert attrs.has(cls)


def _subcommands() -> dict[str, list[str]]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {
        name: [s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
        for name, sub in action.choices.items()
    }


@pytest.mark.parametrize(("command", "options"), sorted(_subcommands().items()))
def test_cli_commands_are_documented(command, options):
    """``docs/cli.md`` has a ``## `lmix <command>` `` section naming each of its options."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    heading = f"## `lmix {command}`"
    assert heading + "\n" in text, f"docs/cli.md has no '{heading}' section"
    section = _section(text, heading)
    missing = [o for o in options if f"`{o}" not in section]
    assert not missing, f"docs/cli.md `lmix {command}` does not document {missing}"


MY_PAGES = ["index.md", "concepts.md", "recipes.md", "errors.md", "cli.md"]


@pytest.mark.parametrize("page", MY_PAGES)
def test_relative_links_resolve(page):
    """Every relative link in the core docs pages points at an existing file."""
    path = DOCS / page
    text = path.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    broken = [link for link in links if "://" not in link and not (path.parent / link).exists()]
    assert not broken, f"docs/{page} links to missing files: {broken}"
