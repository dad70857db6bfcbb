"""The study matrix and its recipes: equal budgets, differences only in the components, sizes in one place."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from lmix_core.errors import ConfigError
from lmix_core.recipe import load_recipe
from studies.seed_papers import plan, stages
from studies.seed_papers.sizes import PRESETS, load_sizes

RECIPES = stages.recipes_dir()
POST = sorted(p.stem for p in RECIPES.glob("*.toml") if p.stem != "pretrain")
COMPONENT_SLOTS = ("combiner", "advantage", "loss", "mixer")


def test_every_run_names_a_shipped_recipe_and_every_recipe_is_used():
    """The matrix and studies/seed_papers/recipes/ agree: no run without a recipe, no recipe without a run."""
    used = {run.recipe for run in plan.RUNS.values()}
    assert used == set(POST)


def _settings(path: Path) -> dict:
    """A recipe's resolved form without its components, description and the model it starts from."""
    d = load_recipe(path).resolved()
    for key in (*COMPONENT_SLOTS, "description"):
        d.pop(key, None)
    d["backend"] = {k: v for k, v in d["backend"].items() if k != "model"}
    return d


def test_recipes_differ_only_in_their_components():
    """Backend, rewards, train, sampling, eval, logging and data settings are identical across methods."""
    reference = _settings(RECIPES / "rl.toml")
    for name in POST:
        assert _settings(RECIPES / f"{name}.toml") == reference, name


def test_recipe_budgets_equal_the_full_preset():
    """Each recipe, run alone with `lmix run`, has the full preset's budget and step-scaled schedules."""
    sizes = load_sizes("full")
    for run in plan.RUNS.values():
        recipe = load_recipe(RECIPES / f"{run.recipe}.toml")
        budget = sizes.from_sft if run.budget == "from_sft" else sizes.post
        assert recipe.train.steps == budget.steps
        assert recipe.train.prompts_per_step == budget.prompts_per_step
        assert recipe.train.group_size == budget.group_size
        assert recipe.sampling.max_new_tokens == budget.max_new_tokens
        assert (recipe.backend.config.lr, recipe.backend.config.warmup_steps) == (
            budget.lr,
            budget.warmup_steps,
        )
        assert recipe.eval.samples == sizes.eval.samples and recipe.eval.temperature == sizes.eval.temperature
        scaled = load_recipe(RECIPES / f"{run.recipe}.toml", plan.schedule_overrides(run.recipe, budget))
        assert scaled.resolved() == recipe.resolved(), run.recipe
    pre = load_recipe(RECIPES / "pretrain.toml")
    p = sizes.pretrain
    assert (pre.train.steps, pre.train.prompts_per_step) == (p.steps, p.docs_per_step)
    assert (pre.backend.config.total_steps, pre.backend.config.lr) == (p.steps, p.lr)
    assert pre.backend.config.warmup_steps == p.warmup_steps
    assert pre.data.text_column == "text" and pre.mixer.name == "sft"


def test_the_papers_settings_are_in_the_recipes():
    """LUFFY: prefix ratio 1, one demonstration per group; KL-GRPO: k3 with the two betas; logit average α = ½."""
    luffy = load_recipe(RECIPES / "luffy.toml").combiner.config
    assert (luffy.ratio_start, luffy.ratio_end, luffy.num_prefixed, luffy.prefix_loss) == (
        1.0,
        1.0,
        1,
        "luffy",
    )
    assert luffy.entropy_top_fraction == 1.0 and luffy.schedule == "constant"
    for name, beta in (("kl_grpo_beta_1e-3", 0.001), ("kl_grpo_beta_4e-2", 0.04)):
        loss = load_recipe(RECIPES / f"{name}.toml").loss.config
        assert (loss.kl_coef, loss.kl_estimator) == (beta, "k3")
    assert load_recipe(RECIPES / "grpo_logit_average.toml").combiner.config.alpha == 0.5
    assert plan.RUNS["grpo_logit_average@sft"].deployments == ("default", "policy")


def test_overrides_build_a_valid_recipe_for_every_run(tmp_path):
    """The study's overrides (paths, seed, budget, schedules, evaluation) validate for every run and preset."""
    layout = stages.Layout(tmp_path)
    for preset in PRESETS:
        sizes = load_sizes(preset)
        for run in plan.RUNS.values():
            overrides = stages.run_overrides(layout, sizes, run, seed=1)
            recipe = load_recipe(RECIPES / f"{run.recipe}.toml", tuple(overrides))
            assert recipe.train.seed == 1 and recipe.train.steps == sizes.post.steps
            assert recipe.backend.config.model == str(layout.start_model(run, 1, 0))
        overrides = stages.pretrain_overrides(layout, sizes, 0, sizes.pretrain.checkpoints[0])
        assert (
            load_recipe(RECIPES / "pretrain.toml", tuple(overrides)).train.steps
            == sizes.pretrain.checkpoints[0]
        )


def test_runs_are_ordered_and_shared():
    """sft@ck3 (comparison 1's start) trains before the runs from it; SFT/RL at ck3 serve comparisons 2-4."""
    runs = plan.runs_for(plan.COMPARISONS)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == len(plan.RUNS) == 22
    first_from_sft = min(i for i, r in enumerate(runs) if r.start == "sft")
    assert names.index("sft@ck3") < first_from_sft
    for number in (2, 3, 4):
        keys = {row.key for row in plan.select([number])[0].rows}
        assert {"sft@ck3", "rl@ck3"} <= keys
    assert [r.name for r in plan.runs_for(plan.select([1]))][0] == "sft@ck3"
    assert plan.bases_for(plan.select([1])) == ()
    assert plan.bases_for(plan.select([2])) == ("ck1", "ck2", "ck3")
    with pytest.raises(ValueError, match="among"):
        plan.select([5])


def test_sizes_presets_and_errors(tmp_path):
    """quick is full with one seed; bad values are reported all at once with their paths."""
    full, quick = load_sizes("full"), load_sizes("quick")
    assert len(full.seeds) == 3 and len(quick.seeds) == 1
    assert attrs.evolve(quick, preset="full", seeds=full.seeds) == full
    bad = tmp_path / "sizes.toml"
    bad.write_text(
        "[full.post]\nstpes = 3\n[full.pretrain]\nsteps = 10\ncheckpoints = [5, 4, 10]\n[full.data]\nlevels = [9]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_sizes("full", bad)
    text = str(err.value)
    assert "full.post.stpes" in text and "did you mean 'steps'" in text
    assert "full.data.levels" in text and "checkpoints" in text


def test_pretraining_is_shared_unless_per_seed(tmp_path):
    """Runs of every seed start from one pretraining by default; with per_seed each seed pretrains its own."""
    sizes = load_sizes("full")
    layout = stages.Layout(tmp_path)
    run = plan.RUNS["rl@ck1"]
    assert {stages.pretrain_seed(sizes, s) for s in sizes.seeds} == {sizes.pretrain.seed}
    assert (
        layout.start_model(run, 2, stages.pretrain_seed(sizes, 2)) == tmp_path / "pretrain" / "seed0" / "ck1"
    )
    own = attrs.evolve(sizes, pretrain=attrs.evolve(sizes.pretrain, per_seed=True))
    assert layout.start_model(run, 2, stages.pretrain_seed(own, 2)) == tmp_path / "pretrain" / "seed2" / "ck1"
    assert layout.start_model(plan.RUNS["rl@sft"], 2, 0) == tmp_path / "seed2" / "sft@ck3" / "model"
