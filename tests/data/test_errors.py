"""Data errors: missing file, missing column, empty data, bad format; all LmixError with an actionable message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmix_core.config import build
from lmix_core.data import FIXTURES_DIR
from lmix_core.data.config import DataConfig
from lmix_core.data.errors import DataError
from lmix_core.data.loading import load_examples
from lmix_core.errors import ConfigError, LmixError


def test_data_error_is_an_lmix_error() -> None:
    """DataError derives from LmixError, so the CLI reports it as a user error."""
    assert issubclass(DataError, LmixError)


def test_missing_file(tmp_path: Path) -> None:
    """A path that does not exist names the path, the split and the accepted kinds."""
    with pytest.raises(DataError, match=r"data\.train: '.*nope\.jsonl' does not exist.*\.parquet"):
        load_examples(DataConfig(train=str(tmp_path / "nope.jsonl")), "train")


def test_folder_without_data_files(tmp_path: Path) -> None:
    """A folder with no .jsonl/.json/.csv/.parquet file is an error, not an empty dataset."""
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="holds no .jsonl, .json, .csv or .parquet"):
        load_examples(DataConfig(train=str(tmp_path)), "train")


def test_missing_column_lists_columns_and_suggests() -> None:
    """A mapped column the file lacks: the message lists the file's columns and the closest match."""
    config = DataConfig(train=str(FIXTURES_DIR / "gsm8k.jsonl"), prompt_column="questions")
    with pytest.raises(DataError) as info:
        load_examples(config, "train")
    message = str(info.value)
    assert "has no column 'questions'" in message
    assert "its columns: question, answer" in message
    assert "did you mean 'question' instead of 'questions'?" in message


def test_adapter_on_wrong_schema() -> None:
    """The gsm8k adapter on a MATH file names the native columns it needs."""
    config = DataConfig(train=str(FIXTURES_DIR / "math.jsonl"), adapter="gsm8k")
    with pytest.raises(DataError, match="has no column 'question', 'answer'"):
        load_examples(config, "train")


def test_empty_files(tmp_path: Path) -> None:
    """An empty jsonl, an empty json array and a blank file all say 'has no rows'."""
    for name, text in [("a.jsonl", ""), ("b.json", "[]"), ("c.jsonl", "\n\n")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match="has no rows"):
            load_examples(DataConfig(train=str(tmp_path / name)), "train")


def test_malformed_file_reports_parser_message(tmp_path: Path) -> None:
    """A broken jsonl line surfaces the parser's reason."""
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", \n')
    with pytest.raises(DataError, match="cannot read .* as json: ArrowInvalid"):
        load_examples(DataConfig(train=str(tmp_path / "bad.jsonl")), "train")


def test_unknown_extension_asks_for_format(tmp_path: Path) -> None:
    """An extension lmix cannot map asks for data.format."""
    (tmp_path / "rows.txt").write_text(json.dumps({"prompt": "a", "answer": "b", "solution": "c"}))
    with pytest.raises(DataError, match="set data.format"):
        load_examples(DataConfig(train=str(tmp_path / "rows.txt")), "train")
    assert (
        load_examples(DataConfig(train=str(tmp_path / "rows.txt"), format="json"), "train")[0].answer == "b"
    )


def test_eval_not_configured() -> None:
    """Asking for eval examples without data.eval says to set it."""
    with pytest.raises(DataError, match="set data.eval"):
        load_examples(DataConfig(train=str(FIXTURES_DIR / "arithmetic.jsonl")), "eval")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"train": "x", "prompt_template": "{question}"}, "must contain '{prompt}'"),
        ({"train": "x", "prompt_template": "{prompt} {}"}, "may only name fields"),
        ({"train": "x", "limit": 0}, "'limit' must be >= 1"),
        ({"train": "x", "adapter": "gsm"}, "did you mean 'gsm8k'"),
        ({"train": ""}, "'train' must be a non-empty string"),
        ({"train": "x", "format": "xml"}, "'format' must be"),
    ],
)
def test_config_validation(table: dict, message: str) -> None:
    """Bad [data] values are ConfigErrors with attrs-style wording."""
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("(", r"\(")):
        build(DataConfig, table)
