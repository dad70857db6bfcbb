"""The plugin's components are usable from a recipe by name, with provenance, like built-in ones."""

from __future__ import annotations

import pytest

from lmix_core.errors import RecipeError
from lmix_core.recipe import load_recipe
from lmix_core.types import RewardInput, Verdict

RECIPE = """
schema = 1
description = "GRPO on Countdown with the entropy-gated mixture"

[backend]
type = "hf"
model = "model"

[combiner]
type = "entropy_gated"
alpha_min = 0.25

[[rewards]]
type = "countdown"
weight = 1.0
usage = "exactly_once"

[[rewards]]
type = "format"
weight = 0.1
required_tags = ["answer"]
boxed = "any"

[train]
steps = 2

[data]
train = "train.jsonl"
"""


def write(tmp_path, text: str):
    (tmp_path / "model").mkdir()
    (tmp_path / "train.jsonl").write_text('{"prompt": "p", "answer": "1"}\n')
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_recipe_names_plugin_components(tmp_path):
    """A recipe naming entropy_gated and countdown validates, builds them, and records the plugin as provider."""
    recipe = load_recipe(write(tmp_path, RECIPE))
    combiner = recipe.combiner.build()
    countdown = recipe.rewards[0].build()
    assert combiner.config.alpha_min == 0.25 and combiner.num_references == 1
    assert (recipe.rewards[0].distribution, recipe.rewards[0].version) == ("lmix-example-plugin", "0.2.0")
    sample = RewardInput(
        prompt="", completion="<answer>1+2+3+4</answer>", metadata={"target": 10, "numbers": [1, 2, 3, 4]}
    )
    assert countdown.score_one(sample) == Verdict(score=1.0, reason="correct")


def test_recipe_reports_plugin_config_problems(tmp_path):
    """A bad plugin parameter is reported with its recipe path, like any built-in's."""
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, RECIPE.replace('usage = "exactly_once"', 'usage = "twice"')))
    assert "rewards[0].usage" in str(err.value)
