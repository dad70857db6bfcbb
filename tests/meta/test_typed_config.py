"""Every component this repository registers declares ``config: Config`` in its class body.

The line tells a type checker which Config ``self.config`` holds, so that mypy (``[tool.mypy]`` in
pyproject.toml, run by ``bash scripts/lmix.sh test``) checks every ``self.config.<field>`` the component reads;
without it ``self.config`` is ``Any`` and a misspelt field goes unnoticed. Read from the source, nothing imported.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from lmix_core.registries import REGISTRIES

#: The distributions of this repository (a third-party plugin's components are its own business).
OURS = ("lmix", "lmix-hf", "lmix-megatron", "lmix-example-plugin")


def _ours() -> list[tuple[str, str]]:
    return [
        (entry.name, entry.value)
        for registry in REGISTRIES.values()
        for entry in registry.entries()
        if entry.dist in OURS
    ]


def _declares_config(value: str) -> bool:
    module, _, cls_name = value.partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} not found"
    tree = ast.parse(Path(spec.origin).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    return any(
        isinstance(s, ast.AnnAssign)
        and isinstance(s.target, ast.Name)
        and s.target.id == "config"
        and isinstance(s.annotation, ast.Name)
        and s.annotation.id == "Config"
        for s in cls.body
    )


def test_every_component_declares_its_config_type():
    """Each registered class of ours has ``config: Config`` in its body (components of every kind included)."""
    components = _ours()
    assert len(components) >= 30  # every kind's built-ins, both backends, the engine, the example plugin
    missing = [f"{name} ({value})" for name, value in components if not _declares_config(value)]
    assert not missing, f"add `config: Config` under the Config class of: {missing}"


def test_the_check_sees_a_missing_declaration(tmp_path, monkeypatch):
    """A class without the line is reported (the check can fail)."""
    (tmp_path / "untyped_part.py").write_text(
        "class Part:\n    class Config:\n        pass\n\n    def run(self):\n        return self.config\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not _declares_config("untyped_part:Part")
