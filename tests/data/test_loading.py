"""load_examples and render_prompt: column mapping, shuffling and limits, folders, formats, chat templates."""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmix_core.data import FIXTURES_DIR
from lmix_core.data.config import DataConfig
from lmix_core.data.errors import DataError
from lmix_core.data.example import Example
from lmix_core.data.loading import build_messages, load_examples, render_prompt
from lmix_core.synthetic.tokenizer import build_tokenizer

ARITHMETIC = str(FIXTURES_DIR / "arithmetic.jsonl")
TOKENIZER = build_tokenizer()


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_arithmetic_fixture_by_hand() -> None:
    """The default columns (prompt, answer, solution) map onto Example; eval keeps file order."""
    examples = load_examples(DataConfig(train=ARITHMETIC, eval=ARITHMETIC), "eval")
    assert len(examples) == 6
    assert examples[0] == Example(
        index=0, prompt="Compute 5*7.", answer="35", demonstration="5*7=35\n\\boxed{35}", metadata={}
    )
    assert [e.index for e in examples] == [0, 1, 2, 3, 4, 5]


def test_train_shuffle_is_seeded_and_limit_applies_after() -> None:
    """Train order is a seeded permutation that keeps source indices; limit keeps the first rows of it."""
    full = load_examples(DataConfig(train=ARITHMETIC, shuffle_seed=3), "train")
    again = load_examples(DataConfig(train=ARITHMETIC, shuffle_seed=3), "train")
    other = load_examples(DataConfig(train=ARITHMETIC, shuffle_seed=4), "train")
    assert full == again and sorted(e.index for e in full) == list(range(6))
    assert [e.index for e in full] != [e.index for e in other]
    limited = load_examples(DataConfig(train=ARITHMETIC, shuffle_seed=3, limit=2), "train")
    assert limited == full[:2]
    first = load_examples(DataConfig(train=ARITHMETIC, eval=ARITHMETIC, eval_limit=2), "eval")
    assert [e.index for e in first] == [0, 1]


def test_column_mapping_metadata_and_no_demonstration(tmp_path: Path) -> None:
    """Custom columns, integer answers as text, metadata columns, and demonstration_column=None."""
    path = _write(
        tmp_path / "q.jsonl", [{"q": "2+2?", "a": 4, "topic": "sums"}, {"q": "3*3?", "a": 9.0, "topic": "x"}]
    )
    config = DataConfig(
        train=path,
        prompt_column="q",
        answer_column="a",
        demonstration_column=None,
        metadata_columns=("topic",),
    )
    examples = sorted(load_examples(config, "train"), key=lambda e: e.index)
    assert [(e.prompt, e.answer, e.demonstration, dict(e.metadata)) for e in examples] == [
        ("2+2?", "4", None, {"topic": "sums"}),
        ("3*3?", "9", None, {"topic": "x"}),  # 9.0 → '9'
    ]


def test_folder_reads_files_in_name_order(tmp_path: Path) -> None:
    """A folder's files are concatenated in name order and indexed continuously."""
    (tmp_path / "d").mkdir()
    _write(tmp_path / "d" / "b.jsonl", [{"prompt": "p2", "answer": "2", "solution": "s2"}])
    _write(
        tmp_path / "d" / "a.jsonl",
        [
            {"prompt": "p0", "answer": "0", "solution": "s0"},
            {"prompt": "p1", "answer": "1", "solution": "s1"},
        ],
    )
    examples = load_examples(DataConfig(train=str(tmp_path / "d"), eval=str(tmp_path / "d")), "eval")
    assert [(e.index, e.prompt) for e in examples] == [(0, "p0"), (1, "p1"), (2, "p2")]


def test_json_array_and_forced_parquet(tmp_path: Path) -> None:
    """A .json array loads as json; format='parquet' reads a parquet file whatever its extension."""
    array = tmp_path / "rows.json"
    array.write_text(json.dumps([{"prompt": "a", "answer": "1", "solution": "x"}]))
    assert load_examples(DataConfig(train=str(array)), "train")[0].prompt == "a"
    odd = tmp_path / "rows.data"
    datasets.Dataset.from_list([{"prompt": "b", "answer": "2", "solution": "y"}]).to_parquet(odd)
    assert load_examples(DataConfig(train=str(odd), format="parquet"), "train")[0].answer == "2"


def test_loading_needs_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a fresh local file works with every socket connection refused (no hub access)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    path = _write(tmp_path / "fresh.jsonl", [{"prompt": "p", "answer": "1", "solution": "s"}])
    assert load_examples(DataConfig(train=path), "train")[0].prompt == "p"


@settings(max_examples=15)  # each example runs a datasets build (~50 ms)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"prompt": st.text(min_size=1, max_size=20), "answer": st.text(max_size=8).map(str.strip)}
        ),
        min_size=1,
        max_size=6,
    )
)
def test_roundtrip_any_text(rows: list[dict]) -> None:
    """Any unicode prompts and answers written as jsonl come back unchanged, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "rows.jsonl", rows)
        config = DataConfig(train=path, eval=path, demonstration_column=None)
        examples = load_examples(config, "eval")
    assert [(e.prompt, e.answer) for e in examples] == [(r["prompt"], r["answer"]) for r in rows]


def test_render_prompt_with_chat_template() -> None:
    """auto + a tokenizer with a template: system and templated user turn, then the assistant header."""
    example = Example(index=0, prompt="Compute 1+2.", answer="3", metadata={"level": 1})
    config = DataConfig(train="x", system_prompt="Be brief.", prompt_template="{prompt} (level {level})")
    assert render_prompt(TOKENIZER, example, config) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nCompute 1+2. (level 1)<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert build_messages(example, config)[1] == {"role": "user", "content": "Compute 1+2. (level 1)"}


def test_render_prompt_plain() -> None:
    """chat_template='none', or a tokenizer without a template: system, blank line, templated prompt."""
    example = Example(index=0, prompt="Compute 1+2.", answer="3")
    config = DataConfig(train="x", system_prompt="S", prompt_template="{prompt}\n", chat_template="none")
    assert render_prompt(TOKENIZER, example, config) == "S\n\nCompute 1+2.\n"
    plain_tokenizer = build_tokenizer()
    plain_tokenizer.chat_template = None
    assert render_prompt(plain_tokenizer, example, DataConfig(train="x")) == "Compute 1+2."


def test_render_prompt_unknown_field() -> None:
    """A template naming a column the example lacks raises DataError naming it and the fix."""
    config = DataConfig(train="x", prompt_template="{prompt} {topic}")
    with pytest.raises(DataError, match="'topic'.*metadata_columns"):
        render_prompt(TOKENIZER, Example(index=0, prompt="p", answer="a"), config)


def test_a_toml_recipe_turns_the_demonstration_column_off_with_false(tmp_path: Path) -> None:
    """TOML has no null: ``demonstration_column = false`` is how a recipe says its data has no worked solutions
    (the default column, ``solution``, would otherwise be required); ``true`` is refused with the allowed types."""
    from lmix_core.errors import RecipeError
    from lmix_core.recipe import load_recipe

    data = _write(tmp_path / "qa.jsonl", [{"prompt": "Compute 1+2.", "answer": 3}])
    body = (
        'schema = 1\n[backend]\ntype = "hf"\nmodel = "m"\n[mixer]\ntype = "rl"\n[[rewards]]\ntype = "math"\n'
        '[train]\nsteps = 1\n[data]\ntrain = "qa.jsonl"\ndemonstration_column = {}\n'
    )
    (tmp_path / "off.toml").write_text(body.format("false"))
    recipe = load_recipe(tmp_path / "off.toml")
    assert recipe.data.demonstration_column is None
    assert "demonstration_column = false" in recipe.to_toml()  # what a run saves reads back the same
    (tmp_path / "saved.toml").write_text(recipe.to_toml())
    assert load_recipe(tmp_path / "saved.toml").data.demonstration_column is None
    assert [(e.prompt, e.answer, e.demonstration) for e in load_examples(recipe.data, "train")] == [
        ("Compute 1+2.", "3", None)
    ]
    with pytest.raises(DataError, match="solution"):  # the default column, which this file lacks
        load_examples(DataConfig(train=data), "train")
    (tmp_path / "on.toml").write_text(body.format("true"))
    with pytest.raises(RecipeError, match="must be string or false or nothing \\(got True\\)"):
        load_recipe(tmp_path / "on.toml")
