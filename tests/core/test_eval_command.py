"""``lmix eval`` on files in the public datasets' schemas (GSM8K, MATH, NuminaMath cn-k12, MMLU) with a tiny model:
the [data] options, --recipe, --completions, strict JSON output, and errors that name the options passed."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from lmix_core import cli
from lmix_core.rewards.math import Math
from lmix_core.testing.tiny import save_tiny_model_dir

ROWS = {
    "gsm8k": [
        {"question": "Tom has 3 bags of 4 apples. How many?", "answer": "3 * 4 = <<3*4=12>>12\n#### 12"},
        {"question": "Ann had 10 pens and lost 3. How many left?", "answer": "10 - 3 = 7\n#### 7"},
    ],
    "math": [
        {"problem": "What is $1+1$?", "solution": "$1+1=\\boxed{2}$.", "level": "Level 1", "type": "Algebra"},
        {"problem": "What is $3^2$?", "solution": "$3^2=\\boxed{9}$.", "level": "Level 2", "type": "Algebra"},
    ],
    "numina_cn_k12": [
        {"source": "cn_k12", "problem": "Find $x$: $2x=6$.", "solution": "$x=\\boxed{3}$", "messages": []},
        {"source": "olympiads", "problem": "Skipped.", "solution": "\\boxed{0}", "messages": []},
        {"source": "cn_k12", "problem": "Find $y$: $y-1=4$.", "solution": "$y=\\boxed{5}$", "messages": []},
    ],
    "mmlu": [
        {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1},
        {
            "question": "Capital of France?",
            "subject": "geo",
            "choices": ["Paris", "Rome", "Oslo", "Bern"],
            "answer": 0,
        },
    ],
}
GOLD = {"gsm8k": ["12", "7"], "math": ["2", "9"], "numina_cn_k12": ["3", "5"], "mmlu": ["B", "A"]}
REWARDS = {"gsm8k": "math", "math": "math", "numina_cn_k12": "math", "mmlu": "multiple_choice"}


def strict_json(text: str) -> object:
    """Parse JSON, refusing NaN and Infinity (which Python's json writes by default but JSON does not allow)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval-model")
    return save_tiny_model_dir(root / "model", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("adapter", ["gsm8k", "math", "numina_cn_k12", "mmlu"])
def test_eval_reads_each_public_schema_and_writes_every_completion(
    model: Path, tmp_path: Path, adapter: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--adapter reads the schema; --completions holds one record per completion with the rendered prompt, the gold
    answer from the adapter, the verdicts, and the answer the math verifier extracts; --out is strict JSON with
    nll null exactly when the data has no demonstrations (MMLU)."""
    suffix = ".parquet" if adapter == "numina_cn_k12" else ".jsonl"
    data = write(tmp_path / f"{adapter}{suffix}", ROWS[adapter])
    out, completions = tmp_path / "out.json", tmp_path / "completions.jsonl"
    argv = ["eval", str(model), "--data", str(data), "--adapter", adapter, "--rewards", REWARDS[adapter]]
    argv += ["--out", str(out), "--completions", str(completions), "--samples", "2", "eval.max_new_tokens=6"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    result = strict_json(out.read_text())
    assert strict_json(capsys.readouterr().out) == result
    assert result["n"] == 2
    assert (result["nll"] is None) == (adapter == "mmlu")
    records = [strict_json(line) for line in completions.read_text().splitlines()]
    assert [(r["gold"], r["sample"]) for r in records] == [(g, s) for g in GOLD[adapter] for s in range(2)]
    question = ROWS[adapter][0].get("question") or ROWS[adapter][0]["problem"]
    assert question in records[0]["prompt"]
    verifier = Math(Math.Config())
    for r in records:
        assert r["verdicts"][0].startswith(REWARDS[adapter] + ": ")
        assert r["correct"] == (r["reward"] >= 1.0)
        expected = verifier.extract(r["completion"]) if REWARDS[adapter] == "math" else None
        assert r["answer"] == expected
    assert result["pass@1"] == sum(r["correct"] for r in records) / len(records)


def test_eval_errors_name_the_options_passed(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A GSM8K file without --adapter: the error names --data and --adapter gsm8k, never data.train or a recipe key,
    and comes before the model loads (a missing model directory is not reached)."""
    data = write(tmp_path / "gsm8k.jsonl", ROWS["gsm8k"])
    assert cli.main(["eval", str(model), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lmix eval: error: --data: {str(data)!r} has no column 'prompt'")
    assert "set --adapter gsm8k to read them" in err
    assert "data." not in err
    assert (
        cli.main(["eval", str(model), "--data", str(data), "--adapter", "gsm8k", "--prompt-template", "{x}"])
        == 1
    )
    assert "data options: 'prompt_template' must contain '{prompt}'" in capsys.readouterr().err
    assert cli.main(["eval", str(model), "--data", str(data), "--rewards", "math,multiple_choise"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lmix eval: error: --rewards: no reward named 'multiple_choise'")
    assert "'multiple_choice'" in err


def test_eval_takes_a_recipe(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--recipe supplies the data settings (adapter, template with a metadata column) and the rewards."""
    data = write(tmp_path / "math.jsonl", ROWS["math"])
    recipe = tmp_path / "eval.toml"
    recipe.write_text(
        f"""schema = 1
[backend]
type = "hf"
model = "{model}"
[[rewards]]
type = "math"
[train]
steps = 1
[eval]
max_new_tokens = 4
[data]
train = "{data}"
adapter = "math"
metadata_columns = ["type"]
prompt_template = "[{{type}}] {{prompt}}"
chat_template = "none"
"""
    )
    completions = tmp_path / "c.jsonl"
    assert cli.main(["eval", str(model), "--recipe", str(recipe), "--completions", str(completions)]) == 0
    first = strict_json(completions.read_text().splitlines()[0])
    assert first["prompt"] == "[Algebra] What is $1+1$?"
    assert strict_json(capsys.readouterr().out)["n"] == 2


def test_bare_model_goes_into_the_backends_declared_model_field(tmp_path, capsys):
    """``--backend`` picks the backend for a bare model directory; the path goes into the field the backend declares
    (``TrainerBackend.model_field``); an unknown backend is named as the option, with suggestions."""
    from lmix_core.evaluation import _bare_recipe
    from lmix_core.registries import backends

    recipe = _bare_recipe(tmp_path, "math", "d.jsonl", "megatron")
    field = backends.get("megatron").model_field
    assert recipe["backend"] == {"type": "megatron", field: str(tmp_path.resolve())}
    model = save_tiny_model_dir(tmp_path / "m", seed=1)
    assert cli.main(["eval", str(model), "--data", "d.jsonl", "--backend", "megatorn"]) == 1
    err = capsys.readouterr().err
    assert "--backend: no backend named 'megatorn'" in err and "Did you mean: 'megatron'?" in err
