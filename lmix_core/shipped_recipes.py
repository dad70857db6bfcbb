"""Recipes shipped inside the installed package, named ``SET:NAME`` (``demo:grpo_logit_average``).

They are package data, read with :mod:`importlib.resources`, so ``lmix run demo:grpo_logit_average`` works from any
directory and from a wheel install as well as from a checkout. Their relative paths (``model =
"runs/demo/sft/model"``) resolve against the working directory rather than the package's folder: ``lmix demo`` writes
``runs/demo/`` where it runs, and the shipped recipes train from there.

``lmix recipes`` lists them with their descriptions; ``lmix recipes NAME`` prints one, comments included, to start
a recipe of your own (``lmix recipes demo:grpo > mine.toml``; in a file, relative paths resolve against the file's
folder).
"""

from __future__ import annotations

import re
import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from lmix_core.errors import Problem, RecipeError

#: The shipped recipe sets: ``set name -> (package, folder inside it)``; each ``*.toml`` there is ``set:stem``.
SETS: dict[str, tuple[str, str]] = {"demo": ("lmix_core.demo", "recipes")}

#: What a shipped recipe's name looks like: ``set:name``.
NAME = re.compile(r"([a-z][a-z0-9_]*):([A-Za-z0-9][A-Za-z0-9_.-]*)")


def is_shipped_name(text: str) -> bool:
    """Whether ``text`` has the ``set:name`` form of a shipped recipe (the caller checks that no such file exists)."""
    return NAME.fullmatch(text) is not None


def _folder(set_name: str) -> Traversable:
    package, folder = SETS[set_name]
    return files(package) / folder


def shipped_names() -> list[str]:
    """Every shipped recipe's ``set:name``, sorted."""
    return sorted(
        f"{s}:{f.name.removesuffix('.toml')}"
        for s in SETS
        for f in _folder(s).iterdir()
        if f.name.endswith(".toml")
    )


def shipped_recipe(name: str) -> Traversable:
    """The resource of the shipped recipe ``name`` (``demo:sft``).

    Raises:
        RecipeError: ``name`` is not a shipped recipe; the message lists the shipped ones.
    """
    m = NAME.fullmatch(name)
    resource = None
    if m and m.group(1) in SETS:
        resource = _folder(m.group(1)) / f"{m.group(2)}.toml"
    if resource is None or not resource.is_file():
        import difflib

        known = shipped_names()
        stem = m.group(2) if m else name
        close = difflib.get_close_matches(stem, [k.split(":", 1)[1] for k in known], n=1)
        close = [k for k in known if close and k.endswith(f":{close[0]}")]
        message = f"no such file, and no shipped recipe {name!r}" + (
            f" (did you mean {close[0]!r}?)" if close else ""
        )
        hint = f"shipped recipes: {', '.join(known)}; `lmix recipes` lists them"
        raise RecipeError(name, [Problem("", message, hint)])
    return resource


def shipped_mapping(name: str) -> dict[str, Any]:
    """The shipped recipe ``name`` as a mapping (``tomllib``), to change and pass to
    :func:`lmix_core.recipe.recipe_from_mapping`."""
    return tomllib.loads(shipped_recipe(name).read_text(encoding="utf-8"))


def recipes_command(args: Any) -> int:
    """``lmix recipes [NAME]``: list the shipped recipes, or print one."""
    name = getattr(args, "name", None)
    if name:
        print(shipped_recipe(name).read_text(encoding="utf-8"), end="")
        return 0
    rows = [(n, str(shipped_mapping(n).get("description", ""))) for n in shipped_names()]
    width = max(len(n) for n, _ in rows)
    for n, description in rows:
        print(f"  {n.ljust(width)}  {description}".rstrip())
    print(
        "\n`lmix run NAME` trains from one (relative paths in it are relative to the working directory); "
        "`lmix recipes NAME` prints it."
    )
    return 0


__all__ = [
    "NAME",
    "SETS",
    "is_shipped_name",
    "recipes_command",
    "shipped_mapping",
    "shipped_names",
    "shipped_recipe",
]
