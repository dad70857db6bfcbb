"""Every registered component, plugins included, has a ``## <name>`` heading on its kind's docs page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmix_core.registries import REGISTRIES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "components"
HEADING = re.compile(r"^##\s+`?([a-z][a-z0-9_]*)`?\s*$", re.MULTILINE)

#: (page, name, provider) for every registered component; entry points are read, nothing is imported.
REGISTERED = [
    (f"{registry.kind.plural}.md", entry.name, entry.provider)
    for registry in REGISTRIES.values()
    for entry in registry.entries()
]


def headings(page: str) -> set[str]:
    path = DOCS / page
    return set(HEADING.findall(path.read_text(encoding="utf-8"))) if path.exists() else set()


def test_components_are_registered():
    """The parametrised check below has something to check: every built-in kind registers components."""
    kinds = {page for page, _, _ in REGISTERED}
    assert kinds == {f"{r.kind.plural}.md" for r in REGISTRIES.values()}
    assert len(REGISTERED) >= 29


@pytest.mark.parametrize(
    ("page", "name", "provider"), REGISTERED, ids=[f"{p[:-3]}:{n}" for p, n, _ in REGISTERED]
)
def test_component_has_a_heading(page, name, provider):
    """``docs/components/<kinds>.md`` has a ``## <name>`` heading for this component."""
    assert (DOCS / page).exists(), f"docs/components/{page} does not exist"
    assert name in headings(page), f"{name} ({provider}) has no '## {name}' heading in docs/components/{page}"
