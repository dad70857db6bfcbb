"""Every field of the megatron backend's Config is documented in docs/megatron.md and docs/components/backends.md."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from lmix_core.backend_settings import BackendSettings
from lmix_megatron.backend import MegatronBackend

DOCS = Path(__file__).resolve().parents[3] / "docs"
FIELDS = [f.name for f in attrs.fields(MegatronBackend.Config)]


def table_fields(text: str) -> set[str]:
    """The field names in the first column of the markdown tables of ``text`` (`` `a` `` or `` `a`, `b` ``)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names.update(part.strip().strip("`") for part in first.split(","))
    return names


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else None]


@pytest.mark.parametrize("field", FIELDS)
def test_field_is_in_docs_megatron(field: str) -> None:
    text = (DOCS / "megatron.md").read_text(encoding="utf-8")
    assert field in table_fields(section(text, "### Config")), f"{field} missing from docs/megatron.md"


@pytest.mark.parametrize("field", FIELDS)
def test_field_is_in_components_backends(field: str) -> None:
    text = (DOCS / "components" / "backends.md").read_text(encoding="utf-8")
    shared = {f.name for f in attrs.fields(BackendSettings)}
    heading = "## Shared settings" if field in shared else "## megatron"
    assert field in table_fields(section(text, heading)), (
        f"{field} missing from components/backends.md {heading}"
    )
