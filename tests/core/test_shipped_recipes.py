"""Recipes shipped in the package: named ``demo:NAME`` from any directory, listed and printed by ``lmix recipes``."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from lmix_core import cli
from lmix_core.errors import RecipeError
from lmix_core.recipe import load_recipe
from lmix_core.shipped_recipes import shipped_mapping, shipped_names, shipped_recipe

DEMO_RECIPES = Path(__file__).resolve().parents[2] / "lmix_core" / "demo" / "recipes"


def test_every_demo_recipe_file_is_a_shipped_name():
    """``shipped_names`` lists exactly the TOML files of ``lmix_core/demo/recipes/``."""
    assert shipped_names() == sorted(f"demo:{p.stem}" for p in DEMO_RECIPES.glob("*.toml"))
    assert "demo:grpo_logit_average" in shipped_names()


def test_a_shipped_recipe_resolves_relative_paths_against_the_working_directory(tmp_path, monkeypatch):
    """``lmix demo`` writes runs/demo/ where it runs; ``demo:NAME`` recipes read it from there, not the package."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo" / "sft" / "model").mkdir(parents=True)
    recipe = load_recipe("demo:grpo_logit_average", ["combiner.alpha=0.7"])
    assert recipe.data.train == str(tmp_path / "runs" / "demo" / "data" / "train.jsonl")
    assert recipe.backend.config.model == str(tmp_path / "runs" / "demo" / "sft" / "model")
    assert recipe.combiner.config.alpha == 0.7
    assert recipe.source == DEMO_RECIPES / "grpo_logit_average.toml"


def test_an_unknown_shipped_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    """A ``set:name`` that is neither a file nor a shipped recipe: one problem, a suggestion, the list."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as info:
        load_recipe("demo:grpo_logit_avg")
    (problem,) = info.value.problems
    assert problem.message == (
        "no such file, and no shipped recipe 'demo:grpo_logit_avg' (did you mean 'demo:grpo_logit_average'?)"
    )
    assert "demo:sft" in problem.hint and "`lmix recipes`" in problem.hint
    with pytest.raises(RecipeError, match="no shipped recipe 'nope:sft'"):
        shipped_recipe("nope:sft")


def test_a_file_named_like_a_shipped_recipe_wins(tmp_path, monkeypatch):
    """An existing file called ``demo:sft`` is read as the file (the name form is only a fallback)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo:sft").write_text("schema = 2\n")
    with pytest.raises(RecipeError, match="this lmix reads schema 1 recipes"):
        load_recipe("demo:sft")


def test_lmix_recipes_lists_and_prints(capsys):
    """``lmix recipes`` lists every shipped name with its description; ``lmix recipes NAME`` prints the file."""
    assert cli.main(["recipes"]) == 0
    listing = capsys.readouterr().out
    for name in shipped_names():
        assert f"{name}  " in listing and shipped_mapping(name)["description"] in listing
    assert cli.main(["recipes", "demo:sft"]) == 0
    text = capsys.readouterr().out
    assert text == (DEMO_RECIPES / "sft.toml").read_text()
    assert tomllib.loads(text)["mixer"]["type"] == "sft"
    assert cli.main(["recipes", "demo:nope"]) == 2
    assert "no shipped recipe 'demo:nope'" in capsys.readouterr().err
