"""Schema adapters (MATH, GSM8K, NuminaMath cn-k12, MMLU) on the shipped fixtures, and boxed-answer extraction."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.data import FIXTURES_DIR
from lmix_core.data.adapters import ADAPTERS, last_boxed
from lmix_core.data.config import AdapterName, DataConfig
from lmix_core.data.errors import DataError
from lmix_core.data.loading import load_examples


def _eval(name: str, adapter: str, **kwargs: object) -> list:
    path = str(FIXTURES_DIR / name)
    return load_examples(DataConfig(train=path, eval=path, adapter=adapter, **kwargs), "eval")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $x = \\boxed{4}$.", "4"),
        ("$\\boxed{\\frac{5}{6}}$", "\\frac{5}{6}"),  # nested braces kept
        ("first \\boxed{5}, then \\boxed{6}", "6"),  # the last box wins
        ("\\fbox{B}", "B"),
        ("\\boxed 7.", "7"),
        ("no box here", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    """The content of the last \\boxed{} (or \\fbox{}), braces balanced; None without a closed box."""
    assert last_boxed(text) == expected


@given(st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=20), st.text(max_size=20))
def test_last_boxed_recovers_content(content: str, prefix: str) -> None:
    """For brace-free content, last_boxed(prefix + \\boxed{content}) is the stripped content."""
    assert last_boxed(f"{prefix}\\boxed{{{content}}}") == content.strip()


def test_every_adapter_name_has_a_factory() -> None:
    """The adapter registry covers exactly the names DataConfig accepts."""
    assert set(ADAPTERS) == set(typing.get_args(AdapterName))


def test_math() -> None:
    """MATH: problem → prompt, last boxed of the solution → answer, solution → demonstration, level/type metadata."""
    examples = _eval("math.jsonl", "math")
    assert [e.answer for e in examples] == ["\\frac{5}{6}", "4", "6", "7"]
    assert examples[1].prompt == "Solve $2x + 3 = 11$ for $x$."
    assert examples[1].demonstration == "Subtracting 3 gives $2x = 8$, so $x = \\boxed{4}$."
    assert examples[0].metadata == {"level": "Level 1", "type": "Prealgebra"}


def test_gsm8k() -> None:
    """GSM8K: answer after ####, commas dropped; demonstration without <<calc>> marks, ending in \\boxed{answer}."""
    examples = _eval("gsm8k.jsonl", "gsm8k")
    assert [e.answer for e in examples] == ["26", "295", "6000"]
    assert examples[0].demonstration == (
        "Mia has 3 * 12 = 36 pencils.\nAfter giving away 10 she has 36 - 10 = 26 pencils.\n\\boxed{26}"
    )
    assert all("<<" not in e.demonstration and "####" not in e.demonstration for e in examples)


def test_numina_cn_k12_filters_other_sources() -> None:
    """NuminaMath (parquet): rows from other sources are skipped; indices are the source rows 0 and 2."""
    examples = _eval("numina_cn_k12.parquet", "numina_cn_k12")
    assert [(e.index, e.answer, e.metadata["source"]) for e in examples] == [
        (0, "13", "cn_k12"),
        (2, "2", "cn_k12"),
    ]


def test_mmlu() -> None:
    """MMLU: lettered choices appended to the question; integer answer → letter; no demonstration."""
    examples = _eval("mmlu.jsonl", "mmlu")
    assert [e.answer for e in examples] == ["B", "A", "C"]
    assert (
        examples[0].prompt == "Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Earth\nD. Mars"
    )
    assert examples[0].demonstration is None
    assert examples[0].metadata == {"choices": ["Venus", "Mercury", "Earth", "Mars"], "subject": "astronomy"}


def test_mmlu_letter_answers_and_invalid_rows(tmp_path: Path) -> None:
    """A letter answer is kept (upper-cased); an out-of-range index skips the row."""
    rows = [
        {"question": "q1", "choices": ["x", "y"], "answer": "b"},
        {"question": "q2", "choices": ["x", "y"], "answer": 5},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(DataConfig(train=str(path), adapter="mmlu"), "train")
    assert [(e.index, e.answer) for e in examples] == [(0, "B")]


def test_adapter_skipping_every_row_is_an_error(tmp_path: Path) -> None:
    """If the adapter skips all rows (no #### in any GSM8K answer), loading fails and says why."""
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match="skipped all 1 rows.*####"):
        load_examples(DataConfig(train=str(path), adapter="gsm8k"), "train")


def test_metadata_columns_with_adapter() -> None:
    """metadata_columns add native columns on top of an adapter's own metadata."""
    examples = _eval("numina_cn_k12.parquet", "numina_cn_k12", metadata_columns=("messages",))
    assert examples[0].metadata["messages"][0]["role"] == "user"
