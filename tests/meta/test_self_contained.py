"""The repository is self-contained, and the installed packages do not depend on a checkout.

* No module, doc or recipe refers to notes that are not in the repository (an outside algorithm note, tracker issue
  or seed numbers); papers are cited by title and arXiv id.
* No installed module finds files through ``__file__`` (package data is read with ``importlib.resources``), so a
  wheel install works from any directory (``bash scripts/lmix.sh wheel-smoke`` checks that end to end).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".git", "runs", "build", "__pycache__", "wandb"}
OUTSIDE = re.compile(r"algorithms\.md|algorithm note|shared/reference|\b[Ii]ssue [0-9]|\bseed 0[0-9]{2}\b")
INSTALLED = [
    ROOT / "lmix_core",
    ROOT / "backends" / "hf" / "lmix_hf",
    ROOT / "backends" / "megatron" / "lmix_megatron",
    ROOT / "plugins" / "lmix-example-plugin" / "lmix_example",
]


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in suffixes and p.is_file() and not SKIP & set(p.relative_to(ROOT).parts)
    )


def test_no_reference_to_documents_outside_the_repository():
    """No ``.py``, ``.md`` or ``.toml`` file names an outside note, an issue number or a seed number."""
    here = Path(__file__).resolve()
    found = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in _files(ROOT, (".py", ".md", ".toml"))
        if p != here
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not found, "\n".join(found)


def test_installed_modules_do_not_locate_files_through_dunder_file():
    """Installed packages read their data with ``importlib.resources``, never relative to ``__file__``."""
    found = [
        f"{p.relative_to(ROOT)}:{i}"
        for root in INSTALLED
        for p in _files(root, (".py",))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "__file__" in line
    ]
    assert not found, "\n".join(found)
