"""Recipes: reading, overrides, path resolution, validation (every problem at once), resolution and provenance.

Components come from the fake distribution ``lmix-fakes 0.3`` registered in the ``lmixtest.*`` groups (see
``distinfo.py``), so these tests do not depend on the built-in components' progress.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lmix_core.errors import BackendError, LmixError, RecipeError
from lmix_core.interfaces.backend import BackendContext
from lmix_core.recipe import (
    ComponentSpec,
    OverrideError,
    Recipe,
    apply_overrides,
    dump_toml,
    load_recipe,
    parse_override,
)
from lmix_core.settings import TrainConfig

BASE = """\
schema = 1
description = "a test recipe"

[backend]
type = "toy"
model = "org/model"

[[rewards]]
type = "math"

[train]
steps = 3

[data]
train = "data/train.jsonl"
"""


def write(folder: Path, text: str, name: str = "recipe.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems_of(registries, path: Path, overrides=()) -> list:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides, registries=registries)
    err = info.value
    assert str(err).startswith(f"{path} has {len(err.problems)} problem")
    assert "Traceback" not in str(err)
    return list(err.problems)


def only_problem(registries, path: Path, overrides=()):
    found = problems_of(registries, path, overrides)
    assert len(found) == 1, [p.render() for p in found]
    return found[0]


# -- valid recipes -----------------------------------------------------------------------------------------------


def test_minimal_recipe_fills_defaults(registries, tmp_path):
    """Absent optional slots take their default types; settings tables their defaults; weight defaults to 1."""
    recipe = load_recipe(write(tmp_path, BASE), registries=registries)
    assert isinstance(recipe, Recipe)
    assert [s.name for s in recipe.components()] == ["toy", "policy", "grpo", "ppo_clip", "rl", "hf", "math"]
    assert recipe.rewards[0].weight == 1.0
    assert recipe.backend.config.model == "org/model"
    assert recipe.advantage.config.eps == 1e-6
    assert recipe.train == TrainConfig(steps=3)
    assert recipe.sampling.temperature == 1.0
    assert recipe.eval.deploy == "auto"
    assert recipe.logging.wandb == "offline"
    assert recipe.description == "a test recipe"
    assert recipe.schema == 1


def test_component_tables_structure_into_configs(registries, tmp_path):
    """Each component table's keys other than ``type`` (and a reward's ``weight``) become Config fields."""
    text = BASE + '\n[combiner]\ntype = "logit_average"\nalpha = 0.25\n\n[[rewards]]\ntype = "format"\n'
    text += 'weight = 0.5\npattern = "boxed"\n'
    recipe = load_recipe(write(tmp_path, text), registries=registries)
    assert recipe.combiner.name == "logit_average" and recipe.combiner.config.alpha == 0.25
    assert [(r.name, r.weight) for r in recipe.rewards] == [("math", 1.0), ("format", 0.5)]
    assert recipe.rewards[1].config.pattern == "boxed"
    assert recipe.rewards[1].slot == "rewards[1]"


def test_provenance_and_summary_name_providers(registries, tmp_path):
    """Provenance gives kind, name, distribution, version and entry point of every component, in recipe order."""
    recipe = load_recipe(write(tmp_path, BASE), registries=registries)
    prov = recipe.provenance()
    assert prov[1] == {
        "slot": "combiner",
        "kind": "combiner",
        "name": "policy",
        "distribution": "lmix-fakes",
        "version": "0.3",
        "entry_point": "lmt_fakes:Policy",
    }
    assert [p["slot"] for p in prov] == [
        "backend",
        "combiner",
        "advantage",
        "loss",
        "mixer",
        "rollout_engine",
        "rewards[0]",
    ]
    assert "rollout_engine=hf (lmix-fakes 0.3)" in recipe.summary()
    assert "backend=toy (lmix-fakes 0.3)" in recipe.summary()
    assert "rewards=[math*1 (lmix-fakes 0.3)]" in recipe.summary()


def test_build_instantiates_components_and_guards_the_backend(registries, tmp_path):
    """``build()`` makes ``cls(config)``; the backend needs the loop's context and says so."""
    recipe = load_recipe(
        write(tmp_path, BASE + '[combiner]\ntype = "logit_average"\n'), registries=registries
    )
    combiner = recipe.combiner.build()
    assert type(combiner).__name__ == "LogitAverage" and combiner.config is recipe.combiner.config
    with pytest.raises(LmixError, match="needs a BackendContext"):
        recipe.backend.build()
    with pytest.raises(LmixError, match="takes no context"):
        recipe.combiner.build(object())
    context = BackendContext(combiner=combiner, num_references=1)
    assert recipe.backend.build(context=context).context is context
    with pytest.raises(BackendError, match="mixes 1 reference"):  # TrainerBackend.__init__ checks the context
        recipe.backend.build(context=BackendContext(combiner=combiner))


def test_resolved_round_trips_through_toml(registries, tmp_path):
    """``dump_toml(resolved())`` is valid TOML that loads, from another folder, into an equal recipe."""
    text = BASE + '[combiner]\ntype = "weighted"\nend = 0.25\n[sampling]\nstop = ["</s>", "\\n\\n"]\n'
    recipe = load_recipe(write(tmp_path / "a", text), registries=registries)
    resolved = recipe.resolved()
    assert resolved["combiner"] == {"type": "weighted", "start": 1.0, "end": 0.25, "schedule": "linear"}
    assert resolved["rewards"] == [{"type": "math", "weight": 1.0, "fallback": "none"}]
    assert resolved["data"]["train"] == str(tmp_path / "a" / "data" / "train.jsonl")
    assert "cache_dir" not in resolved["backend"]  # None values are left out (TOML has no null)
    text2 = dump_toml(resolved)
    assert tomllib.loads(text2) == resolved
    again = load_recipe(write(tmp_path / "b" / "c", text2), registries=registries)
    assert again.resolved() == resolved
    assert again.combiner.config == recipe.combiner.config and again.data == recipe.data
    assert recipe.to_toml() == text2


# -- overrides ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("combiner.alpha=0.7", ("combiner", "alpha"), 0.7),
        ("train.steps=10", ("train", "steps"), 10),
        ("logging.progress=false", ("logging", "progress"), False),
        ('combiner.type="weighted"', ("combiner", "type"), "weighted"),
        ("combiner.type=weighted", ("combiner", "type"), "weighted"),
        ("backend.model=runs/x/model", ("backend", "model"), "runs/x/model"),
        ("sampling.stop=['a', \"b\"]", ("sampling", "stop"), ["a", "b"]),
        ('combiner={type = "weighted", end = 0.1}', ("combiner",), {"type": "weighted", "end": 0.1}),
        ("rewards[0].weight=0.5", ("rewards", 0, "weight"), 0.5),
        ("rewards.0.weight=0.5", ("rewards", 0, "weight"), 0.5),
        ("a.b[1][2].c=1e-3", ("a", "b", 1, 2, "c"), 0.001),
        ("advantage.eps = 1e-4 ", ("advantage", "eps"), 1e-4),
        ('data.system_prompt=""', ("data", "system_prompt"), ""),
        ("x=1 # a comment", ("x",), 1),
        ("x=a=b", ("x",), "a=b"),
    ],
)
def test_parse_override(text, path, value):
    """Keys split into names and indexes; values are TOML, or a bare word taken as a string."""
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("combiner.alpha", "is not KEY=VALUE"),
        ("=3", "is not KEY=VALUE"),
        ("combiner..alpha=1", "malformed key"),
        ("0.alpha=1", "malformed key"),
        ("combiner.al pha=1", "malformed key"),
        ("combiner.alpha=", "has no value"),
        ("sampling.stop=[1, 2", "not valid TOML"),
        ('data.train="unterminated', "not valid TOML"),
    ],
)
def test_parse_override_rejects_bad_syntax(text, fragment):
    """Malformed overrides raise OverrideError with a hint instead of guessing."""
    with pytest.raises(OverrideError, match=fragment) as info:
        parse_override(text)
    assert isinstance(info.value, LmixError)


@given(st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.booleans(), st.text()))
def test_override_values_round_trip_through_toml(value):
    """Any TOML-written scalar given as an override value comes back unchanged."""
    text = dump_toml({"v": value}).split(" = ", 1)[1].strip()
    assert parse_override(f"k={text}") == (("k",), value)


def test_apply_overrides_sets_creates_and_appends():
    """Overrides set nested keys, create missing tables, append at index len(array), and later ones win."""
    data = {"rewards": [{"type": "math"}], "train": {"steps": 1}}
    problems, applied = apply_overrides(
        data,
        [
            "train.steps=5",
            "combiner.alpha=0.5",
            "rewards[1].type=format",
            "rewards.1.weight=2",
            "train.steps=7",
        ],
    )
    assert problems == []
    assert data == {
        "rewards": [{"type": "math"}, {"type": "format", "weight": 2}],
        "train": {"steps": 7},
        "combiner": {"alpha": 0.5},
    }
    assert applied == ["train.steps", "combiner.alpha", "rewards[1].type", "rewards[1].weight", "train.steps"]


def test_apply_overrides_reports_every_bad_one():
    """Out-of-range indexes, indexing a table, and setting inside a scalar are problems; good ones still apply."""
    data = {"rewards": [{"type": "math"}], "train": {"steps": 1}}
    problems, applied = apply_overrides(
        data, ["rewards[3].weight=1", "train[0]=1", "train.steps.x=1", "nonsense", "train.seed=4"]
    )
    assert [p.path for p in problems] == [
        "override 'rewards[3].weight=1'",
        "override 'train[0]=1'",
        "override 'train.steps.x=1'",
        "override 'nonsense'",
    ]
    assert "out of range: rewards has 1 entries" in problems[0].message and "index 1" in problems[0].hint
    assert "cannot index train: it is a table" in problems[1].message
    assert problems[2].message == "cannot set train.steps.x: train.steps is the value 1, not a table"
    assert data["train"] == {"steps": 1, "seed": 4} and applied == ["train.seed"]


def test_overrides_apply_before_validation(registries, tmp_path):
    """``load_recipe`` applies overrides, then validates the result."""
    recipe = load_recipe(
        write(tmp_path, BASE),
        ["combiner.type=logit_average", "combiner.alpha=0.9", 'rewards[1]={type="format", pattern="x"}'],
        registries=registries,
    )
    assert recipe.combiner.config.alpha == 0.9
    assert [r.name for r in recipe.rewards] == ["math", "format"]


def test_type_override_revalidates_leftover_keys(registries, tmp_path):
    """Changing ``type`` keeps the table's other keys, which are checked against the new Config (stale → unknown)."""
    path = write(tmp_path, BASE + '[combiner]\ntype = "logit_average"\nalpha = 0.3\n')
    problem = only_problem(registries, path, ["combiner.type=weighted"])
    assert problem.path == "combiner.alpha"
    assert problem.message == "combiner 'weighted' has no parameter 'alpha'"
    assert "end, schedule, start" in problem.hint
    recipe = load_recipe(path, ['combiner={type="weighted"}'], registries=registries)
    assert recipe.combiner.name == "weighted"


# -- path resolution ---------------------------------------------------------------------------------------------


def test_data_paths_resolve_against_the_recipe_folder(registries, tmp_path, monkeypatch):
    """Relative ``[data]`` paths are joined to the recipe's folder; absolute and ``~`` paths are kept/expanded."""
    monkeypatch.chdir(tmp_path)
    text = BASE.replace('"data/train.jsonl"', '"../shared/train.jsonl"') + 'eval = "/abs/eval.jsonl"\n'
    recipe = load_recipe(write(tmp_path / "recipes" / "x", text), registries=registries)
    assert recipe.data.train == str(tmp_path / "recipes" / "shared" / "train.jsonl")
    assert recipe.data.eval == "/abs/eval.jsonl"
    assert recipe.raw["data"]["train"] == recipe.data.train
    home = load_recipe(write(tmp_path, BASE), ["data.eval=~/e.jsonl"], registries=registries)
    assert home.data.eval == os.path.expanduser("~/e.jsonl")


def test_overridden_paths_resolve_against_the_working_directory(registries, tmp_path, monkeypatch):
    """A relative path given on the command line means what it means in the shell: relative to the cwd."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = write(tmp_path / "recipes", BASE)
    recipe = load_recipe(path, ["data.train=mine.jsonl", "backend.model=./m"], registries=registries)
    assert recipe.data.train == str(work / "mine.jsonl")
    assert recipe.backend.config.model == str(work / "m")
    whole = load_recipe(path, ['data={train = "t.jsonl"}'], registries=registries)
    assert whole.data.train == str(work / "t.jsonl")


def test_backend_model_resolves_only_when_it_is_clearly_a_path(registries, tmp_path, monkeypatch):
    """``backend.model``/``references`` resolve if they start with ./ or ../ or exist next to the recipe."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "r"
    (folder / "models" / "sft").mkdir(parents=True)
    text = BASE.replace(
        'model = "org/model"', 'model = "models/sft"\nreferences = ["org/ref", "../up", "models"]'
    )
    recipe = load_recipe(write(folder, text), registries=registries)
    assert recipe.backend.config.model == str(folder / "models" / "sft")  # exists next to the recipe
    assert recipe.backend.config.references == ("org/ref", str(tmp_path / "up"), str(folder / "models"))
    hub = load_recipe(write(folder, BASE, "hub.toml"), registries=registries)
    assert hub.backend.config.model == "org/model"  # a hub id (or a cwd-relative path) stays as written


def test_path_typed_fields_resolve_in_any_component(registries, tmp_path):
    """A Config field typed ``Path`` is a file path wherever it is: relative values join the recipe folder."""
    text = BASE.replace('model = "org/model"', 'model = "org/model"\ncache_dir = "scratch"')
    recipe = load_recipe(write(tmp_path, text), registries=registries)
    assert recipe.backend.config.cache_dir == tmp_path / "scratch"


# -- malformed recipes: each sort gives one clear problem with its path ------------------------------------------


def test_missing_file(registries, tmp_path):
    """A recipe that does not exist is one problem naming the file."""
    problem = only_problem(registries, tmp_path / "nope.toml")
    assert "no such file" in problem.message and "nope.toml" in problem.message


def test_directory_instead_of_file(registries, tmp_path):
    """A folder given as the recipe says so."""
    assert "is a directory" in only_problem(registries, tmp_path).message


def test_invalid_toml_gives_line_and_column(registries, tmp_path):
    """tomllib's line and column come through, with the offending line quoted."""
    path = write(tmp_path, 'schema = 1\n[backend]\ntype = "toy\n')
    problem = only_problem(registries, path)
    assert problem.message.startswith("not valid TOML")
    assert "line 3" in problem.message and "column" in problem.message
    assert problem.hint == 'that line reads: type = "toy'


def test_non_utf8_file(registries, tmp_path):
    """Bytes that are not UTF-8 are one problem, not a UnicodeDecodeError."""
    path = tmp_path / "latin.toml"
    path.write_bytes(b'schema = 1\ndescription = "caf\xe9"\n')
    assert "not UTF-8" in only_problem(registries, path).message


@pytest.mark.parametrize(
    ("extra", "path", "message", "hint"),
    [
        (
            '[combiner]\ntype = "logit_average"\nalpha = "half"\n',
            "combiner.alpha",
            "'alpha' must be a number (got 'half')",
            "",
        ),
        (
            '[combiner]\ntype = "logit_average"\nalpha = 1.5\n',
            "combiner.alpha",
            "'alpha' must be <= 1.0 (got 1.5)",
            "",
        ),
        (
            '[combiner]\ntype = "logit_average"\nalpah = 0.5\n',
            "combiner.alpah",
            "combiner 'logit_average' has no parameter 'alpah'",
            "did you mean 'alpha'?",
        ),
        (
            "[advantage]\nepz = 0.1\n",
            "advantage.epz",
            "advantage 'grpo' (the default type) has no parameter 'epz'",
            "did you mean 'eps'?",
        ),
        (
            '[advantage]\nstd = "unbiassed"\n',
            "advantage.std",
            "'std' must be 'unbiased' or 'population' (got 'unbiassed')",
            "did you mean 'unbiased'?",
        ),
        ("[sampling]\ntop_p = 0\n", "sampling.top_p", "'top_p' must be > 0.0 (got 0.0)", ""),
        ("[eval]\nsamples = 2.5\n", "eval.samples", "'samples' must be an integer (got 2.5)", ""),
        ("[logging]\nprogress = 1\n", "logging.progress", "'progress' must be true or false (got 1)", ""),
        ("[combinr]\nx = 1\n", "combinr", "unknown table [combinr]", "did you mean 'combiner'?"),
        ("[reward]\ntype = 'math'\n", "reward", "unknown table [reward]", "did you mean 'rewards'?"),
        ("seed = 3\n", "seed", "unknown key 'seed'", "top-level keys: schema, description"),
        ('[mixer]\ntype = "constant"\nmu = -1\n', "mixer.mu", "'mu' must be >= 0.0 (got -1.0)", ""),
    ],
)
def test_single_problem_messages(registries, tmp_path, extra, path, message, hint):
    """Wrong types, out-of-range values, unknown keys and tables: path, expectation, given value, suggestion."""
    text = (
        BASE.replace("[[rewards]]", extra + "\n[[rewards]]", 1)
        if not extra.startswith("seed")
        else extra + BASE
    )
    problem = only_problem(registries, write(tmp_path, text))
    assert (problem.path, problem.message) == (path, message)
    assert problem.hint.startswith(hint)


def test_unknown_type_lists_registered_names_with_providers(registries, tmp_path):
    """An unknown ``type`` gets the registry's "did you mean" and every registered name with its provider."""
    problem = only_problem(registries, write(tmp_path, BASE + '[combiner]\ntype = "logit_avg"\n'))
    assert problem.path == "combiner.type"
    assert problem.message == "no combiner named 'logit_avg'"
    assert "Did you mean: 'logit_average'?" in problem.hint
    assert (
        "logit_average (lmix-fakes 0.3), policy (lmix-fakes 0.3), weighted (lmix-fakes 0.3)" in problem.hint
    )
    assert "`lmix components combiner`" in problem.hint


def test_plugin_that_fails_to_import_is_a_problem(registries, tmp_path):
    """A reward whose plugin cannot be imported is a problem naming distribution, version and entry point."""
    path = write(tmp_path, BASE + '[[rewards]]\ntype = "broken"\n')
    problem = only_problem(registries, path)
    assert problem.path == "rewards[1].type"
    assert "failed to import" in problem.message and "lmix-fakes 0.3" in problem.message
    assert "'lmt_broken:Broken'" in problem.message and "lmt_dependency_nobody_installed" in problem.message
    assert "Only recipes that name 'broken' are affected" in problem.hint


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (
            BASE.replace('[backend]\ntype = "toy"\nmodel = "org/model"\n', ""),
            "backend",
            "missing table [backend]",
        ),
        (BASE.replace('type = "toy"\n', ""), "backend.type", "missing: name the backend to use"),
        (
            BASE.replace('model = "org/model"\n', ""),
            "backend.model",
            "required by backend 'toy', but missing",
        ),
        (
            BASE.replace('[[rewards]]\ntype = "math"\n', ""),
            "rewards",
            "missing: add at least one [[rewards]]",
        ),
        ("rewards = []\n" + BASE.replace('[[rewards]]\ntype = "math"\n', ""), "rewards", "at least one"),
        (BASE.replace("[[rewards]]", "[rewards]"), "rewards", "must be an array of tables"),
        (
            BASE.replace('[[rewards]]\ntype = "math"\n', "[[rewards]]\nweight = 2\n"),
            "rewards[0].type",
            "missing",
        ),
        (BASE.replace("[train]\nsteps = 3\n", ""), "train", "missing table [train]"),
        (BASE.replace("steps = 3", "seed = 1"), "train.steps", "required by [train], but missing"),
        (BASE.replace('[data]\ntrain = "data/train.jsonl"\n', ""), "data", "missing table [data]"),
        (BASE.replace("schema = 1\n", ""), "schema", "missing"),
        (BASE.replace("schema = 1", 'schema = "1"'), "schema", "must be an integer (got '1')"),
        (BASE.replace('description = "a test recipe"', "description = 3"), "description", "must be a string"),
        ('combiner = "policy"\n' + BASE, "combiner", "must be a table naming a combiner (got 'policy')"),
        ("train = 3\n" + BASE.replace("[train]\nsteps = 3\n", ""), "train", "must be a table (got 3)"),
        (BASE.replace('type = "math"', "type = 3"), "rewards[0].type", "must be a string naming a reward"),
        (
            BASE.replace('type = "math"', 'type = "math"\nweight = "high"'),
            "rewards[0].weight",
            "must be a number",
        ),
        (BASE.replace('type = "math"', 'type = "math"\nweight = inf'), "rewards[0].weight", "must be finite"),
        (
            BASE.replace("steps = 3", "steps = 4\nprompts_per_step = 6\nminibatches = 4"),
            "train.minibatches",
            "divide",
        ),
    ],
)
def test_missing_and_misshapen_tables(registries, tmp_path, text, path, fragment):
    """Missing required tables/keys, wrong table shapes, bad weights, cross-field checks: one problem each."""
    problem = only_problem(registries, write(tmp_path, text))
    assert problem.path == path
    assert fragment in problem.message


def test_schema_mismatch_stops_early(registries, tmp_path):
    """Another schema version is reported alone: the rest of the file may mean something else there."""
    text = BASE.replace("schema = 1", "schema = 2") + "[bogus]\n"
    problem = only_problem(registries, write(tmp_path, text))
    assert (problem.path, problem.message) == ("schema", "this lmix reads schema 1 recipes (got 2)")
    assert "upgrade lmix" in problem.hint


def test_bad_override_syntax_is_a_recipe_problem(registries, tmp_path):
    """Bad overrides are reported with the recipe's other problems, not raised separately."""
    found = problems_of(registries, write(tmp_path, BASE), ["combiner.alpha", "train.steps=0"])
    assert [p.path for p in found] == ["override 'combiner.alpha'", "train.steps"]
    assert found[0].message == "is not KEY=VALUE"
    assert found[1].message == "'steps' must be >= 1 (got 0)"


def test_every_problem_is_reported_at_once(registries, tmp_path):
    """A recipe with three problems in two tables lists exactly those three, each with its path."""
    text = (
        BASE.replace("steps = 3", "steps = 0") + '[combiner]\ntype = "logit_average"\nalpha = 2\nbeta = 1\n'
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text), registries=registries)
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("combiner.beta", "combiner 'logit_average' has no parameter 'beta'"),
        ("combiner.alpha", "'alpha' must be <= 1.0 (got 2.0)"),
        ("train.steps", "'steps' must be >= 1 (got 0)"),
    ]
    assert str(info.value).splitlines()[0].endswith("has 3 problems:")


def test_two_bad_fields_in_one_table_are_two_problems(registries, tmp_path):
    """Field validators run one by one, so two out-of-range values in one table are both reported."""
    text = BASE.replace("steps = 3", "steps = 0\ngroup_size = 0\nppo_epochs = 1")
    found = problems_of(registries, write(tmp_path, text))
    assert [(p.path, p.message) for p in found] == [
        ("train.steps", "'steps' must be >= 1 (got 0)"),
        ("train.group_size", "'group_size' must be >= 1 (got 0)"),
    ]


def test_problems_render_one_per_line_with_paths(registries, tmp_path):
    """The RecipeError text: a header, then each problem on its own line starting with its path, hints indented."""
    text = BASE.replace("steps = 3", "steps = 0") + '[combiner]\ntype = "logit_avg"\n'
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text), registries=registries)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{tmp_path / 'recipe.toml'} has 2 problems:"
    assert lines[1] == "  combiner.type: no combiner named 'logit_avg'"
    assert lines[2].startswith("      Did you mean: 'logit_average'?")
    assert "  train.steps: 'steps' must be >= 1 (got 0)" in lines


# -- dump_toml ---------------------------------------------------------------------------------------------------

_keys = st.text(min_size=0, max_size=8)
_strings = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    _strings,
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _values, max_size=5))
@example({"0\n": {}})  # a key ending in a newline must be quoted (a `$` anchor once let it through as bare)
@example({"0\n": []})
def test_dump_toml_round_trips(data):
    """``tomllib.loads(dump_toml(d)) == d`` for nested tables, arrays of tables, odd keys and strings."""
    assert tomllib.loads(dump_toml(data)) == data


def test_dump_toml_layout():
    """Scalars first, tables as [a.b], arrays of tables as [[a]], NaN and infinities written as TOML does."""
    text = dump_toml(
        {"t": {"x": 1, "sub": {"y": [1, 2]}}, "a": 1, "r": [{"w": 0.5}, {"w": math.inf}], "n": math.nan}
    )
    assert text == (
        "a = 1\nn = nan\n\n[t]\nx = 1\n\n[t.sub]\ny = [1, 2]\n\n[[r]]\nw = 0.5\n\n[[r]]\nw = inf\n"
    )
    assert dump_toml({"odd key": {"é": '"q"\n'}}) == '\n["odd key"]\n"é" = "\\"q\\"\\n"\n'.lstrip("\n")


def test_dump_toml_refuses_what_toml_cannot_hold():
    """None (TOML has no null), lone surrogates and arbitrary objects raise instead of writing bad TOML."""
    with pytest.raises(TypeError, match="no null"):
        dump_toml({"x": None})
    with pytest.raises(ValueError, match="surrogate"):
        dump_toml({"x": "\ud800"})
    with pytest.raises(TypeError, match="cannot write"):
        dump_toml({"x": object()})


def test_component_spec_is_plain_data():
    """A ComponentSpec built by hand (as the loop may) builds without an entry and reports unknown provenance."""
    spec = ComponentSpec("combiner", "x", dict, {"a": 1})
    assert spec.provenance()["distribution"] == "?"
    assert spec.build() == {"a": 1}
