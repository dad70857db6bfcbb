"""Structuring recipe tables into attrs Configs: every problem at once, in the house wording, and back again."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

import attrs
import pytest
from attrs import validators as v
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.config import build, describe_fields, field_docs, structure, unstructure
from lmix_core.errors import ConfigError
from lmix_core.settings import EvalConfig, LoggingConfig, SamplingConfig, TrainConfig


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@attrs.frozen(kw_only=True)
class Inner:
    """A nested table.

    Attributes:
        depth: how deep.
    """

    depth: int = attrs.field(default=1, validator=v.ge(0))


@attrs.frozen(kw_only=True)
class Cfg:
    """A Config using every supported field type.

    Attributes:
        alpha: mixing weight, in [0, 1].
        steps: how many; a long description
            that continues on a second line.
        names: some names.
    """

    alpha: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)])
    steps: int = attrs.field(validator=v.ge(1))
    names: tuple[str, ...] = ()
    pair: tuple[int, float] = (1, 2.0)
    mode: Literal["a", "b"] = "a"
    speed: Mode = Mode.FAST
    where: Path | None = None
    columns: dict[str, str] = attrs.field(factory=dict)
    inner: Inner = attrs.field(factory=Inner)
    tags: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=v.deep_iterable(v.min_len(1)))

    def __attrs_post_init__(self) -> None:
        if self.steps < len(self.names):
            raise ValueError(f"'names' must not outnumber 'steps' (got {len(self.names)} > {self.steps})")


def test_valid_table_structures_with_conversions():
    """Ints become floats, arrays tuples, strings paths and enums, tables nested Configs and dicts."""
    table = {
        "alpha": 1,
        "steps": 3,
        "names": ["x"],
        "pair": [4, 5],
        "mode": "b",
        "speed": "slow",
        "where": "a/b",
        "columns": {"prompt": "q"},
        "inner": {"depth": 2},
        "tags": ["t"],
    }
    config, problems = structure(Cfg, table, path="c", owner="cfg")
    assert problems == []
    assert config == Cfg(
        alpha=1.0,
        steps=3,
        names=("x",),
        pair=(4, 5.0),
        mode="b",
        speed=Mode.SLOW,
        where=Path("a/b"),
        columns={"prompt": "q"},
        inner=Inner(depth=2),
        tags=("t",),
    )
    assert isinstance(config.alpha, float)


@pytest.mark.parametrize(
    ("key", "value", "message", "hint"),
    [
        ("alpha", "x", "'alpha' must be a number (got 'x')", ""),
        ("alpha", True, "'alpha' must be a number (got True)", ""),
        ("steps", 2.0, "'steps' must be an integer (got 2.0)", ""),
        ("names", "x", "'names' must be array of string (got 'x')", ""),
        ("names", [1], "'names' must be array of string (got [1])", ""),
        ("pair", [1], "'pair' must be an array of 2 values (got [1])", ""),
        ("pair", [1, "x"], "'pair' must be array of (integer, number) (got [1, 'x'])", ""),
        ("mode", "c", "'mode' must be 'a' or 'b' (got 'c')", ""),
        ("mode", "aa", "'mode' must be 'a' or 'b' (got 'aa')", "did you mean 'a'?"),
        ("speed", "slwo", "'speed' must be 'fast' or 'slow' (got 'slwo')", "did you mean 'slow'?"),
        ("where", 3, "'where' must be path or nothing (got 3)", ""),
        ("columns", {"a": 1}, "'columns' must be table of string (got {'a': 1})", ""),
        ("alpha", 1.5, "'alpha' must be <= 1.0 (got 1.5)", ""),
        ("steps", 0, "'steps' must be >= 1 (got 0)", ""),
        ("inner", {"depth": -1}, "'depth' must be >= 0 (got -1)", ""),
        ("tags", [""], "Length of 'tags' must be >= 1 (got 0)", ""),
    ],
)
def test_each_problem_has_path_expectation_and_value(key, value, message, hint):
    """One bad field is one problem at ``path.key`` saying what was expected and what was given."""
    table = {"steps": 3, key: value}
    config, problems = structure(Cfg, table, path="c", owner="cfg")
    assert config is None
    assert len(problems) == 1
    expected_path = "c.inner.depth" if key == "inner" else f"c.{key}"
    assert (problems[0].path, problems[0].message, problems[0].hint) == (expected_path, message, hint)


def test_unknown_missing_type_and_range_problems_all_at_once():
    """Unknown keys, missing required fields, wrong types and out-of-range values are reported together."""
    config, problems = structure(Cfg, {"alpah": 0.1, "mode": 3, "alpha": 2, "zzz": 1}, path="c", owner="cfg")
    assert config is None
    assert [(p.path, p.message) for p in problems] == [
        ("c.alpah", "cfg has no parameter 'alpah'"),
        ("c.mode", "'mode' must be 'a' or 'b' (got 3)"),
        ("c.zzz", "cfg has no parameter 'zzz'"),
        ("c.steps", "required by cfg, but missing"),
        ("c.alpha", "'alpha' must be <= 1.0 (got 2.0)"),
    ]
    assert problems[0].hint == "did you mean 'alpha'?"
    assert problems[2].hint.startswith("its parameters: alpha, columns, inner")


def test_cross_field_check_points_at_the_first_named_field():
    """``__attrs_post_init__`` errors run last and are filed under the field their message names first."""
    config, problems = structure(Cfg, {"steps": 1, "names": ["a", "b"]}, path="c", owner="cfg")
    assert config is None
    assert [(p.path, p.message) for p in problems] == [
        ("c.names", "'names' must not outnumber 'steps' (got 2 > 1)")
    ]


def test_build_raises_config_error_listing_every_problem():
    """``build`` (library use) raises ConfigError with every problem, one per line."""
    with pytest.raises(ConfigError) as info:
        build(Cfg, {"alpha": 3}, mode="z")
    lines = str(info.value).splitlines()
    assert lines == [
        "mode: 'mode' must be 'a' or 'b' (got 'z')",
        "steps: required by Cfg, but missing",
        "alpha: 'alpha' must be <= 1.0 (got 3.0)",
    ]
    assert build(Cfg, steps=2).steps == 2


def test_describe_fields_and_field_docs():
    """Field rows give the type in recipe words and the default (or "(required)"); docs come from Attributes:."""
    rows = {name: (tp, default) for name, tp, default in describe_fields(Cfg)}
    assert rows["alpha"] == ("number", "0.5")
    assert rows["steps"] == ("integer", "(required)")
    assert rows["names"] == ("array of string", "()")
    assert rows["mode"] == ("'a' or 'b'", "'a'")
    assert rows["speed"] == ("'fast' or 'slow'", "<Mode.FAST: 'fast'>")
    assert rows["where"] == ("path or nothing", "None")
    assert rows["columns"] == ("table of string", "{}")
    docs = field_docs(Cfg)
    assert docs == {
        "alpha": "mixing weight, in [0, 1].",
        "steps": "how many; a long description that continues on a second line.",
        "names": "some names.",
    }


def test_unstructure_is_toml_ready():
    """Tuples become lists, paths strings, enums values, nested Configs tables, None values are left out."""
    cfg = Cfg(steps=2, names=("a",), where=Path("x/y"), speed=Mode.SLOW, tags=("t",))
    assert unstructure(cfg) == {
        "alpha": 0.5,
        "steps": 2,
        "names": ["a"],
        "pair": [1, 2.0],
        "mode": "a",
        "speed": "slow",
        "where": "x/y",
        "columns": {},
        "inner": {"depth": 1},
        "tags": ["t"],
    }
    assert "where" not in unstructure(Cfg(steps=2))


@st.composite
def train_configs(draw) -> TrainConfig:
    minibatches = draw(st.integers(1, 4))
    return TrainConfig(
        steps=draw(st.integers(1, 10**6)),
        prompts_per_step=minibatches * draw(st.integers(1, 64)),
        group_size=draw(st.integers(1, 64)),
        minibatches=minibatches,
        seed=draw(st.integers(-(2**31), 2**31)),
        eval_every=draw(st.integers(0, 100)),
    )


@given(
    train_configs(),
    st.builds(
        SamplingConfig, temperature=st.floats(0.01, 5), stop=st.lists(st.text(), max_size=3).map(tuple)
    ),
    st.sampled_from([EvalConfig(), EvalConfig(samples=4, temperature=1.0, deploy="policy")]),
    st.builds(
        LoggingConfig, wandb=st.sampled_from(["offline", "online", "disabled"]), progress=st.booleans()
    ),
)
def test_structure_inverts_unstructure_for_settings(train, sampling, evaluation, logging):
    """For every settings Config, ``structure(unstructure(c)) == c``."""
    for config in (train, sampling, evaluation, logging):
        again, problems = structure(type(config), unstructure(config), path="x", owner="x")
        assert problems == []
        assert again == config
