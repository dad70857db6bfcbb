"""The synthetic arithmetic task, the general probe and the pretraining corpus: correctness, determinism, splits."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import attrs
import math_verify
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmix_core.data.config import DataConfig
from lmix_core.data.loading import load_examples
from lmix_core.demo.task import (
    LEVELS,
    generate,
    generate_corpus,
    generate_probe,
    split_of,
    write_jsonl,
)
from lmix_core.errors import ConfigError

_EXPRESSION = re.compile(r"^Compute ([0-9+\-*]+)\.$")


def _expression(prompt: str) -> str:
    match = _EXPRESSION.match(prompt)
    assert match is not None, prompt
    return match.group(1)


def test_example_rows_by_hand() -> None:
    """A level-3 row has the documented shape: one line per operation, '*' first, then the boxed answer."""
    rows = generate(50, levels=[3], seed=0)
    row = next(r for r in rows if "*" in r["prompt"] and "+" in r["prompt"])
    assert set(row) == {"prompt", "answer", "solution", "level"} and row["level"] == 3
    lines = row["solution"].split("\n")
    assert len(lines) == 3 and "*" in lines[0]  # e.g. 'Compute 37+4*8.' → '4*8=32', '37+32=69', '\boxed{69}'
    assert lines[-1] == f"\\boxed{{{row['answer']}}}"


def _check_line_steps(step: str, level: int) -> None:
    """'a op b=...=r' (short, place_value): every side evaluates to the same value, within the level's bound."""
    sides = step.split("=")
    assert len({eval(side) for side in sides}) == 1, step
    assert 0 <= eval(sides[-1]) <= LEVELS[level].max_value


def _check_columns(step: str, level: int) -> None:
    """'a op b: c1, c2, ..., r' (columns): r = a op b, one true single-column fact per digit of the operands."""
    head, rest = step.split(": ")
    *columns, result = rest.split(", ")
    assert eval(head) == int(result) and 0 <= int(result) <= LEVELS[level].max_value, step
    a, op, b = re.fullmatch(r"(\d+)([+\-*])(\d+)", head).groups()
    assert len(columns) == (len(a) if op == "*" else max(len(a), len(b))), step
    for column in columns:
        lhs, rhs = column.split("=")
        assert eval(lhs) == int(rhs) and all(len(t) <= 2 for t in re.split(r"[+\-*]", lhs)), step


@given(
    seed=st.integers(0, 10_000),
    levels=st.lists(st.sampled_from(sorted(LEVELS)), min_size=1, max_size=3, unique=True),
    style=st.sampled_from(["short", "columns", "place_value"]),
)
def test_solutions_are_correct(seed: int, levels: list[int], style: str) -> None:
    """Every step of every solution is true arithmetic and the last line is \\boxed{answer} = eval(expression)."""
    for row in generate(6, levels=levels, seed=seed, style=style):
        expression = _expression(row["prompt"])
        value = eval(expression)  # Python's precedence is the task's: '*' first, then left to right
        assert row["answer"] == str(value) and value >= 0
        *steps, last = row["solution"].split("\n")
        assert last == f"\\boxed{{{value}}}"
        n_ops = LEVELS[row["level"]].n_ops
        assert len(steps) >= n_ops if style == "columns" else len(steps) == n_ops
        for step in steps:
            (_check_columns if style == "columns" else _check_line_steps)(step, row["level"])


def test_columns_style_by_hand() -> None:
    """The column scratchpad on hand-checked cases: carries, borrows, a two-digit factor with a zero digit."""
    from lmix_core.demo.task import _columns_step

    assert _columns_step(58, "+", 67, 125) == "58+67: 8+7=15, 5+6+1=12, 125"
    assert _columns_step(305, "-", 27, 278) == "305-27: 15-7=8, 10-1-2=7, 3-1-0=2, 278"
    assert _columns_step(52, "-", 48, 4) == "52-48: 12-8=4, 5-1-4=0, 4"
    assert _columns_step(47, "*", 23, 1081) == (
        "47*3: 7*3=21, 4*3+2=14, 141\n47*2: 7*2=14, 4*2+1=9, 94\n141+940: 1+0=1, 4+4=8, 1+9=10, 1081"
    )
    assert _columns_step(427, "*", 40, 17080) == "427*4: 7*4=28, 2*4+2=10, 4*4+1=17, 1708"


def test_deterministic_under_seed() -> None:
    """Same arguments give identical rows in the same order; another seed gives different rows."""
    a = generate(40, levels=(1, 2, 3), seed=7)
    assert a == generate(40, levels=(1, 2, 3), seed=7)
    assert a != generate(40, levels=(1, 2, 3), seed=8)
    assert generate_probe(30, seed=1) == generate_probe(30, seed=1)
    assert generate_corpus(10, seed=2) == generate_corpus(10, seed=2)


def test_unworked_fraction_drops_the_working_only() -> None:
    """``unworked_fraction`` keeps problems and answers, replaces about that share of solutions by the bare
    ``\\boxed{N}``, and picks the same rows whatever else is drawn with them."""
    worked = generate(1000, levels=(1, 2), seed=3, style="columns")
    mixed = generate(1000, levels=(1, 2), seed=3, style="columns", unworked_fraction=0.5)
    assert [(r["prompt"], r["answer"]) for r in mixed] == [(r["prompt"], r["answer"]) for r in worked]
    bare = [m for m in mixed if m["solution"] == f"\\boxed{{{m['answer']}}}"]
    assert 430 <= len(bare) <= 570
    assert all(m == w for m, w in zip(mixed, worked) if m not in bare)
    by_prompt = {r["prompt"]: r["solution"] for r in mixed}
    fewer = generate(200, levels=(1, 2), seed=3, style="columns", unworked_fraction=0.5)
    shared = [r for r in fewer if r["prompt"] in by_prompt]
    assert len(shared) >= 100 and all(r["solution"] == by_prompt[r["prompt"]] for r in shared)
    assert all(
        r["solution"] == f"\\boxed{{{r['answer']}}}" for r in generate(30, seed=3, unworked_fraction=1.0)
    )


def test_held_out_disjoint_from_train() -> None:
    """Train and test problems never coincide, whatever the seeds; the split is a pure function of the prompt."""
    train = generate(600, levels=(1, 2, 3), seed=0, split="train")
    test = generate(600, levels=(1, 2, 3), seed=1, split="test")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert all(split_of(r["prompt"]) == "train" for r in train)
    assert all(split_of(r["prompt"]) == "test" for r in test)
    probe_train, probe_test = (
        generate_probe(200, split="train", seed=3),
        generate_probe(200, split="test", seed=3),
    )
    assert not {r["prompt"] for r in probe_train} & {r["prompt"] for r in probe_test}


def test_held_out_fraction_is_about_ten_percent() -> None:
    """About 10% of keys fall in the test split (binomial, n=5000: 10% ± 4 sd is 8.3%..11.7%)."""
    share = sum(split_of(f"Compute {i}+{i + 1}.") == "test" for i in range(5000)) / 5000
    assert share == pytest.approx(0.10, abs=0.017)


def test_rows_distinct_and_levels_balanced() -> None:
    """A call never repeats a problem and gives each level the same count."""
    rows = generate(90, levels=(1, 4, 7), seed=0)
    assert len({r["prompt"] for r in rows}) == 90
    assert [sum(r["level"] == lv for r in rows) for lv in (1, 4, 7)] == [30, 30, 30]


def test_levels_get_harder() -> None:
    """Operations, operand digits and solution length never decrease with the level, and grow overall."""
    specs = [attrs.astuple(LEVELS[lv]) for lv in sorted(LEVELS)]  # (n_ops, digits, mul_digits, max_value)
    assert all(all(x <= y for x, y in zip(a, b)) and a != b for a, b in zip(specs, specs[1:]))
    lengths = [
        statistics.mean(len(r["solution"]) for r in generate(60, levels=[lv], seed=0))
        for lv in sorted(LEVELS)
    ]
    assert all(b >= a for a, b in zip(lengths, lengths[1:])), lengths
    assert lengths[-1] > 4 * lengths[0]


def test_place_value_style_by_hand() -> None:
    """place_value breaks operations by the place values of one operand, on the documented examples."""
    rows = generate(300, levels=[5], seed=0, style="place_value")
    products = [line for r in rows for line in r["solution"].split("\n") if "*" in line]
    assert any(line.count("=") == 3 for line in products)  # e.g. 45*23=45*20+45*3=900+135=1035
    sums = [r for r in generate(40, levels=[1], seed=0, style="place_value") if "+" in r["prompt"]]
    a, b, row = next(
        (a, b, r)
        for r in sums
        for a, b in [map(int, _expression(r["prompt"]).split("+"))]
        if b % 10 and b > 10
    )
    # 58+67=58+60+7=118+7=125
    expected = f"{a}+{b}={a}+{b // 10 * 10}+{b % 10}={a + b // 10 * 10}+{b % 10}={a + b}"
    assert row["solution"].split("\n")[0] == expected


def test_math_verify_accepts_solutions() -> None:
    """math-verify (the `math` reward's parser) reads each solution's boxed answer as the true result."""
    for row in generate(6, levels=(1, 3, 6), seed=0):
        assert math_verify.verify(math_verify.parse(row["answer"]), math_verify.parse(row["solution"]))


def test_probe_answers_are_correct() -> None:
    """Probe answers are the reversed word, the sorted word, or the letter's count; solution == answer."""
    for row in generate_probe(60, seed=0):
        word = row["prompt"].rsplit(" ", 1)[-1]
        expected = {
            "reverse": word[::-1],
            "sort": "".join(sorted(word)),
            "count": str(word.count(row["prompt"].split()[1])),
        }[row["kind"]]
        assert row["answer"] == row["solution"] == expected


def test_corpus_only_holds_train_problems() -> None:
    """No held-out arithmetic problem or probe item text appears in the corpus; the mix picks document kinds."""
    corpus = "\n".join(generate_corpus(300, seed=0))
    test = generate(200, levels=(1, 2, 3), seed=0, split="test") + generate_probe(200, seed=0)
    assert not [r["prompt"] for r in test if r["prompt"] + "\n" in corpus]
    facts_docs = [d for d in generate_corpus(300, seed=0) if not re.search(r"[a-z]", d)]  # facts only
    facts = [line.split("=")[0] for doc in facts_docs for line in doc.split("\n")]
    assert facts and all(split_of(f"Compute {fact}.") == "train" for fact in facts)
    only_solutions = generate_corpus(5, seed=0, mix={"solutions": 1.0})
    assert all(doc.startswith("Compute ") and doc.count("\\boxed{") == 4 for doc in only_solutions)


def test_errors_are_clear() -> None:
    """Unknown levels or kinds, and asking more distinct items than exist, raise ConfigError."""
    with pytest.raises(ConfigError, match="levels"):
        generate(3, levels=[0])
    with pytest.raises(ConfigError, match="kinds"):
        generate_probe(3, kinds=["shout"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="cannot draw 100 distinct"):
        generate_probe(
            100, kinds=["reverse"], min_len=1, max_len=1, split="train"
        )  # only 26 one-letter words
    with pytest.raises(ConfigError, match="mix"):
        generate_corpus(3, mix={"poetry": 1.0})
    with pytest.raises(ConfigError, match="unworked_fraction"):
        generate(3, unworked_fraction=1.5)


def test_written_rows_load_as_examples(tmp_path: Path) -> None:
    """write_jsonl output loads through DataConfig's default columns with the same prompt, answer, solution."""
    rows = generate(5, levels=(1, 2), seed=0, split="test")
    path = write_jsonl(tmp_path / "eval.jsonl", rows)
    examples = load_examples(DataConfig(train=str(path), eval=str(path), metadata_columns=("level",)), "eval")
    assert [(e.prompt, e.answer, e.demonstration, e.metadata["level"]) for e in examples] == [
        (r["prompt"], r["answer"], r["solution"], r["level"]) for r in rows
    ]


@settings(max_examples=10)
@given(seed=st.integers(0, 100))
def test_corpus_is_deterministic_text(seed: int) -> None:
    """The corpus is a list of non-empty strings, identical under the same seed."""
    docs = generate_corpus(8, seed=seed)
    assert len(docs) == 8 and all(isinstance(d, str) and d for d in docs)
    assert docs == generate_corpus(8, seed=seed)
