"""Every recipe in the repository (``recipes/``, the demo's ``lmix_core/demo/recipes/``, the study's
``studies/*/recipes/``) validates, and its resolved form loads back to the same recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmix_core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = (
    ROOT / "recipes",
    ROOT / "lmix_core" / "demo" / "recipes",
    *sorted((ROOT / "studies").glob("*/recipes")),
)
RECIPES = sorted(p for folder in FOLDERS for p in folder.rglob("*.toml"))


def test_recipes_are_shipped():
    """There are recipes to check (the parametrised test below is not vacuous)."""
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_validates_and_round_trips(path, tmp_path):
    """``load_recipe`` accepts the recipe; ``recipe.toml`` written from it (as a run saves it) loads back equal."""
    recipe = load_recipe(path)
    saved = tmp_path / "recipe.toml"
    saved.write_text(recipe.to_toml())
    assert load_recipe(saved).resolved() == recipe.resolved()
