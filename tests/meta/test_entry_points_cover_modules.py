"""Every component module under ``lmix_core/<kinds>/`` is registered, and every registered module exists.

The house rule (docs/concepts.md): a component lives in ``lmix_core/<kinds>/<name>.py`` and is registered as
``<name>`` in the ``lmix.<kinds>`` entry-point group of ``pyproject.toml``. Modules in those folders that hold
helpers rather than a component must be listed in :data:`HELPERS` with the reason.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIND_DIRS = ("combiners", "advantages", "losses", "mixers", "rewards")

#: Helper modules inside component folders: ``folder/file.py -> why it is not a component``.
HELPERS: dict[str, str] = {
    "rewards/pool.py": "the worker pool that runs verifiers with a per-sample time limit",
    "rewards/fork_server.py": "signal set-up the reward pool's fork server imports (it ignores SIGTERM)",
}


def declared() -> dict[str, dict[str, str]]:
    """``group -> {name: "module:Class"}`` from lmix's own pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {g: dict(eps) for g, eps in project["entry-points"].items() if g.startswith("lmix.")}


def test_every_component_module_is_registered():
    """Each non-helper module of a component folder is the target of an entry point in that kind's group."""
    groups = declared()
    missing = []
    for folder in KIND_DIRS:
        registered = {value.partition(":")[0] for value in groups.get(f"lmix.{folder}", {}).values()}
        for path in sorted((ROOT / "lmix_core" / folder).glob("*.py")):
            rel = f"{folder}/{path.name}"
            if path.name == "__init__.py" or rel in HELPERS:
                continue
            if f"lmix_core.{folder}.{path.stem}" not in registered:
                missing.append(rel)
    assert not missing, (
        f"modules not registered in pyproject.toml's entry points: {missing}; register them under "
        f'[project.entry-points."lmix.<kinds>"], or list helper modules in HELPERS with a reason'
    )


def test_every_entry_point_module_exists_and_is_named_after_its_entry():
    """``name = "lmix_core.<kinds>.<name>:Class"``: the file exists and its name equals the registered name."""
    wrong = []
    for group, eps in declared().items():
        folder = group.split(".", 1)[1]
        for name, value in eps.items():
            module = value.partition(":")[0]
            if module != f"lmix_core.{folder}.{name}":
                wrong.append(f"{group}: {name} = {value!r} (expected module lmix_core.{folder}.{name})")
            elif not (ROOT / "lmix_core" / folder / f"{name}.py").exists():
                wrong.append(f"{group}: {name} = {value!r} (lmix_core/{folder}/{name}.py does not exist)")
    assert not wrong, "\n".join(wrong)


def test_helper_list_is_current():
    """Every listed helper exists and is not itself registered (no stale exclusions)."""
    registered = {v.partition(":")[0] for eps in declared().values() for v in eps.values()}
    for rel in HELPERS:
        assert (ROOT / "lmix_core" / rel).exists(), rel
        assert f"lmix_core.{rel[:-3].replace('/', '.')}" not in registered, rel
