"""Data errors a new user meets first: known dataset schemas, CSV input, prompt templates, SFT without demonstrations.

The files are written here in the public datasets' own schemas (GSM8K, MATH, NuminaMath cn-k12, MMLU).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lmix_core.data.config import DataConfig
from lmix_core.data.errors import DataError
from lmix_core.data.loading import Names, load_examples

GSM8K = [
    {"question": "Tom has 3 bags of 4 apples. How many apples?", "answer": "3 * 4 = <<3*4=12>>12\n#### 12"},
    {"question": "A pen costs $1,200 cents. In cents?", "answer": "It is 1,200.\n#### 1,200"},
]
MATH = [
    {
        "problem": "What is $1+1$?",
        "solution": "$1+1=\\boxed{2}$.",
        "level": "Level 1",
        "type": "Prealgebra",
    }
]
CN_K12 = [
    {
        "source": "cn_k12",
        "problem": "Find $x$ if $2x=6$.",
        "solution": "$x=\\boxed{3}$",
        "messages": [{"role": "user", "content": "Find $x$ if $2x=6$."}],
    }
]
MMLU = [
    {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1},
]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    ("rows", "adapter", "title"),
    [
        (GSM8K, "gsm8k", "GSM8K"),
        (MATH, "math", "MATH"),
        (CN_K12, "numina_cn_k12", "NuminaMath cn-k12"),
        (MMLU, "mmlu", "MMLU"),
    ],
    ids=["gsm8k", "math", "cn_k12", "mmlu"],
)
def test_known_schema_under_the_default_mapping_names_its_adapter(
    tmp_path: Path, rows: list[dict], adapter: str, title: str
) -> None:
    """A file in a known schema read with the default columns is told its dataset and the adapter to set, and the
    old wrong guess ("did you mean 'question' instead of 'solution'") is gone; with that adapter it loads."""
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_examples(DataConfig(train=path), "train")
    message = str(info.value)
    assert (
        f'these are the columns of the {title} dataset: set data.adapter = "{adapter}" to read them'
        in message
    )
    assert "did you mean" not in message
    assert load_examples(DataConfig(train=path, adapter=adapter), "train")


def test_wrong_adapter_on_a_known_schema_names_the_right_one(tmp_path: Path) -> None:
    """The math adapter on a GSM8K file points to gsm8k; lmix eval's names say --adapter gsm8k."""
    path = write_jsonl(tmp_path / "d.jsonl", GSM8K)
    with pytest.raises(DataError, match=r'set data\.adapter = "gsm8k"'):
        load_examples(DataConfig(train=path, adapter="math"), "train")
    cli = Names(train="--data", eval="--data", cli=True)
    with pytest.raises(DataError) as info:
        load_examples(DataConfig(train=path, eval=path), "eval", names=cli)
    message = str(info.value)
    assert message.startswith("--data: ")
    assert "set --adapter gsm8k to read them" in message
    assert "data." not in message


def test_unknown_columns_keep_the_column_hint(tmp_path: Path) -> None:
    """Columns of no known schema: the closest name and the column settings (in the caller's spelling)."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompts": "1+1", "answer": "2", "solution": "2"}])
    with pytest.raises(DataError) as info:
        load_examples(DataConfig(train=path, eval=path), "eval", names=Names(eval="--data", cli=True))
    message = str(info.value)
    assert "did you mean 'prompts' instead of 'prompt'?" in message
    assert "set --prompt-column / --answer-column / --demonstration-column, or pick --adapter" in message


def test_csv_files_are_read(tmp_path: Path) -> None:
    """A .csv file (header row) is read by extension, numbers become answer strings; GSM8K as CSV too."""
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "answer", "solution"])
        writer.writeheader()
        writer.writerow({"prompt": "1+1, then a comma", "answer": 2, "solution": "1+1=2\n\\boxed{2}"})
    (example,) = load_examples(DataConfig(train=str(path)), "train")
    assert (example.prompt, example.answer, example.demonstration) == (
        "1+1, then a comma",
        "2",
        "1+1=2\n\\boxed{2}",
    )
    gsm = tmp_path / "gsm.csv"
    with gsm.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(GSM8K)
    got = load_examples(DataConfig(train=str(gsm), eval=str(gsm), adapter="gsm8k"), "eval")
    assert [e.answer for e in got] == ["12", "1200"]


def test_unknown_extension_hint_lists_only_formats_that_work(tmp_path: Path) -> None:
    """The format hint offers json, csv and parquet, each of which then reads the file."""
    (tmp_path / "rows.tsv").write_text("prompt,answer,solution\na,b,c\n")
    with pytest.raises(DataError) as info:
        load_examples(DataConfig(train=str(tmp_path / "rows.tsv")), "train")
    assert "set data.format to 'json' (JSON lines or a JSON array), 'csv' (a header row) or 'parquet'" in str(
        info.value
    )
    assert load_examples(DataConfig(train=str(tmp_path / "rows.tsv"), format="csv"), "train")[0].answer == "b"


def test_template_naming_a_missing_field_fails_at_load(tmp_path: Path) -> None:
    """A template naming a column that is not a metadata column fails when the data is read (no tokenizer needed),
    naming the template setting and the fix; listing the column in metadata_columns makes it load."""
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "1+1", "answer": "2", "solution": "2", "topic": "sums"}]
    )
    config = DataConfig(train=path, prompt_template="[{topic}] {prompt}")
    with pytest.raises(DataError) as info:
        load_examples(config, "train")
    assert str(info.value).startswith("data.prompt_template names {topic}, which row 0 of data.train lacks")
    assert "add the column to data.metadata_columns" in str(info.value)
    cli = Names(train="--data", eval="--data", cli=True)
    with pytest.raises(DataError, match=r"^--prompt-template names \{topic\}.*--metadata-columns"):
        load_examples(
            DataConfig(train=path, eval=path, prompt_template="[{topic}] {prompt}"), "eval", names=cli
        )
    fixed = DataConfig(train=path, prompt_template="[{topic}] {prompt}", metadata_columns=("topic",))
    assert load_examples(fixed, "train")[0].metadata == {"topic": "sums"}


def _recipe(tmp_path: Path, data: str, mixer: str = "sft", extra: str = "") -> Path:
    path = tmp_path / f"r{len(list(tmp_path.glob('r*.toml')))}.toml"
    path.write_text(
        f"""schema = 1
[backend]
type = "hf"
model = "no/such-model"
[mixer]
type = "{mixer}"
[[rewards]]
type = "math"
[train]
steps = 1
[data]
{data}
{extra}
"""
    )
    return path


@pytest.mark.parametrize("mixer", ["sft", "chord", "parallel_average"])
def test_demonstration_mixer_without_demonstrations_fails_validation(
    tmp_path: Path, mixer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """SFT-using mixers on MMLU data (no worked solutions) or on empty solutions: `lmix validate` exits 2 naming the
    mixer and the fix, before any model is loaded (the model name does not even exist); RL on the same data is ok."""
    from lmix_core import cli

    mmlu = write_jsonl(tmp_path / "mmlu.jsonl", MMLU)
    recipe = _recipe(tmp_path, f'train = "{mmlu}"\nadapter = "mmlu"', mixer)
    assert cli.main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}: data problem:\n  mixer {mixer!r} trains on demonstrations" in err
    assert "none of the 1 training examples of data.train has one (the 'mmlu' adapter gives none" in err
    assert '[mixer] type = "rl"' in err
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "1+1", "answer": "2", "solution": None}])
    assert cli.main(["validate", str(_recipe(tmp_path, f'train = "{empty}"', mixer))]) == 2
    assert "its data.demonstration_column 'solution' is empty in every row" in capsys.readouterr().err
    assert cli.main(["validate", str(_recipe(tmp_path, f'train = "{mmlu}"\nadapter = "mmlu"', "rl"))]) == 0
    assert cli.main(["validate", "--no-data", str(recipe)]) == 0
    capsys.readouterr()
    # lmix run reports it before the backend looks for "no/such-model"
    assert cli.main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 1
    assert f"mixer {mixer!r} trains on demonstrations" in capsys.readouterr().err


def test_validate_reports_data_errors_found_without_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lmix validate` reads the data: a template naming a missing column and a GSM8K file under the default mapping
    are both reported with exit 2."""
    from lmix_core import cli

    gsm = write_jsonl(tmp_path / "gsm.jsonl", GSM8K)
    bad_template = _recipe(
        tmp_path, f'train = "{gsm}"\nadapter = "gsm8k"\nprompt_template = "{{level}}: {{prompt}}"'
    )
    assert cli.main(["validate", str(bad_template)]) == 2
    assert "data.prompt_template names {level}, which row" in capsys.readouterr().err
    wrong_schema = _recipe(tmp_path, f'train = "{gsm}"', "rl")
    assert cli.main(["validate", str(wrong_schema)]) == 2
    assert 'set data.adapter = "gsm8k" to read them' in capsys.readouterr().err
