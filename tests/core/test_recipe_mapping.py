"""``recipe_from_mapping``: a recipe given as a Python mapping gets the same checks and errors as its TOML file.

Components come from the fake distribution ``lmix-fakes 0.3`` (``distinfo.py``), as in ``test_recipe.py``.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from lmix_core.errors import RecipeError
from lmix_core.recipe import load_recipe, recipe_from_mapping

from .test_recipe import BASE, write

#: Five problems in four tables: an unknown parameter, an out-of-range value, a misspelt type with suggestions, a
#: bad setting and an unknown top-level table.
BROKEN = (
    BASE.replace("steps = 3", "steps = 0")
    + '[combiner]\ntype = "logit_average"\nalpha = 2\nbeta = 1\n'
    + '[advantage]\ntype = "grpoo"\n'
    + "[extra]\nx = 1\n"
)


def _problems(call) -> list[tuple[str, str, str]]:
    with pytest.raises(RecipeError) as info:
        call()
    return [(p.path, p.message, p.hint) for p in info.value.problems]


def test_a_mapping_gives_the_recipe_its_toml_file_gives(registries, tmp_path, monkeypatch):
    """The mapping parsed from a file validates to an equal recipe (paths resolved against ``base_dir``)."""
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "recipes", BASE)
    from_file = load_recipe(path, ["combiner.type=logit_average"], registries=registries)
    from_mapping = recipe_from_mapping(
        tomllib.loads(BASE),
        ["combiner.type=logit_average"],
        base_dir=tmp_path / "recipes",
        registries=registries,
    )
    assert from_mapping.resolved() == from_file.resolved()
    assert from_mapping.data.train == str(tmp_path / "recipes" / "data" / "train.jsonl")


def test_a_mapping_gives_the_same_problems_as_its_toml_file(registries, tmp_path):
    """Every problem, with its path, message and hint, is the same from the mapping as from the file."""
    from_file = _problems(lambda: load_recipe(write(tmp_path, BROKEN), registries=registries))
    from_mapping = _problems(lambda: recipe_from_mapping(tomllib.loads(BROKEN), registries=registries))
    assert len(from_file) == 5
    assert from_mapping == from_file


def test_the_error_names_the_source(registries):
    """The RecipeError's header names the ``source`` the caller gave."""
    with pytest.raises(RecipeError) as info:
        recipe_from_mapping(tomllib.loads(BROKEN), source="my sweep, run 3", registries=registries)
    assert str(info.value).splitlines()[0] == "my sweep, run 3 has 5 problems:"


def test_relative_paths_resolve_against_the_working_directory_by_default(registries, tmp_path, monkeypatch):
    """Without ``base_dir``, relative paths mean what they mean in the shell."""
    monkeypatch.chdir(tmp_path)
    recipe = recipe_from_mapping(tomllib.loads(BASE), registries=registries)
    assert recipe.data.train == str(tmp_path / "data" / "train.jsonl")
    assert recipe.source == Path("<mapping>")


def test_paths_and_tuples_are_taken_as_strings_and_arrays(registries, tmp_path):
    """A ``Path`` value is its string, a tuple an array; the caller's mapping is not modified."""
    data = tomllib.loads(BASE)
    data["data"]["train"] = tmp_path / "t.jsonl"
    data["rewards"] = ({"type": "math"},)
    before = copy.deepcopy(data)
    recipe = recipe_from_mapping(data, ["train.steps=5"], registries=registries)
    assert recipe.data.train == str(tmp_path / "t.jsonl")
    assert [r.name for r in recipe.rewards] == ["math"]
    assert recipe.train.steps == 5
    assert data == before


def test_values_toml_cannot_hold_are_problems_at_their_paths(registries):
    """``None``, objects and non-string keys are reported with the other problems, each at its path."""
    data = tomllib.loads(BASE.replace("steps = 3", "steps = 0"))
    data["backend"]["lr"] = None
    data["rewards"][0][1] = "x"
    data["data"]["eval"] = object()
    found = _problems(lambda: recipe_from_mapping(data, registries=registries))
    assert [(path, message.split(" (got")[0]) for path, message, _ in found] == [
        ("backend.lr", "is not a TOML value"),
        ("rewards[0]", "keys must be strings"),
        ("data.eval", "is not a TOML value"),
        ("train.steps", "'steps' must be >= 1"),
    ]
