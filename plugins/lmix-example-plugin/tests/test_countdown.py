"""``countdown``: expression extraction, safe evaluation and the game's rules."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.config import build
from lmix_core.errors import ConfigError
from lmix_core.types import RewardInput, Verdict
from lmix_example.countdown import Countdown

GAME = {"target": 24, "numbers": [1, 2, 3, 4]}


def judge(completion: str, metadata=GAME, **params) -> Verdict:
    verifier = Countdown(build(Countdown.Config, params))
    return verifier.score_one(RewardInput(prompt="", completion=completion, metadata=metadata))


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>(4 + 2) * (3 + 1)</answer>",  # 6 * 4 = 24, every number once
        "I tried 4*3*2 first. <answer>4 * 3 * 2</answer>",  # 24 without the 1: allowed by default
        "<answer>(4+2)*(3+1) = 24</answer>",  # the '= 24' is dropped
        "So \\boxed{4 × 3 × 2 × 1}",  # boxed, × accepted
        "<answer>4 * (3 + 2 + 1)</answer>",  # 4 * 6
        "<answer>wrong</answer> ... <answer>1 * 2 * 3 * 4</answer>",  # the last block counts
    ],
)
def test_correct_solutions(completion):
    """Valid expressions that reach the target score 1 with reason 'correct'."""
    assert judge(completion) == Verdict(score=1.0, reason="correct")


def test_exact_fractions():
    """Division is exact: 8 / (3 − 8 / 3) = 24 with numbers 3, 3, 8, 8."""
    game = {"target": 24, "numbers": [3, 3, 8, 8]}
    assert judge("<answer>8 / (3 - 8 / 3)</answer>", metadata=game).score == 1.0  # 8 / (1/3)


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("<answer>4 * 3 * 2 - 1</answer>", "wrong: the expression equals 23, target 24"),
        ("<answer>4 * 6</answer>", "uses 6, which is not among the numbers"),
        ("<answer>4 * 4 + 2 * 3 + 2</answer>", "uses 2 more often than given"),
        (
            "<answer>2 ** 4 + 8</answer>",
            "invalid expression: Pow is not allowed",
        ),
        (
            "<answer>__import__('os')</answer>",
            "invalid expression: Call is not allowed",
        ),
        ("<answer>4 / (2 - 2)</answer>", "invalid expression: division by zero"),
        ("<answer>(4 + </answer>", "invalid expression: '(' was never closed"),
        (
            "<answer>-4 * -6</answer>",
            "invalid expression: UnaryOp is not allowed",
        ),
        (
            "<answer>4.0 * 6</answer>",
            "invalid expression: Constant is not allowed",
        ),
    ],
)
def test_rule_breaking_answers_get_the_format_score(completion, reason):
    """A found but wrong or rule-breaking expression scores format_score (0.1) and says why."""
    assert judge(completion) == Verdict(score=0.1, reason=reason)


def test_nothing_to_judge():
    """No expression, or unusable metadata, scores 0."""
    assert judge("24 = 4*3*2") == Verdict(score=0.0, reason="no expression found")
    assert judge("<answer></answer>") == Verdict(score=0.0, reason="no expression found")
    bad = {"target": "24", "numbers": [1, 2]}
    assert judge("<answer>1</answer>", metadata=bad).reason.startswith("metadata needs an integer 'target'")


def test_exactly_once_mode_and_format_score():
    """usage='exactly_once' needs every number; format_score sets the partial credit."""
    assert judge("<answer>4 * 3 * 2</answer>", usage="exactly_once") == Verdict(
        score=0.1, reason="does not use every number"
    )
    assert judge("<answer>4 * 3 * 2 * 1</answer>", usage="exactly_once").score == 1.0
    assert judge("<answer>4 + 3</answer>", format_score=0.0).score == 0.0


def test_long_expressions_are_refused():
    """Expressions longer than max_expression_chars are not parsed."""
    assert judge("<answer>" + "1+" * 200 + "1</answer>") == Verdict(
        score=0.1, reason="invalid expression: longer than 200"
    )


def test_config_validation():
    """format_score must be in [0, 1]; usage must be a known mode."""
    with pytest.raises(ConfigError, match="'format_score' must be <= 1"):
        build(Countdown.Config, {"format_score": 1.5})
    with pytest.raises(ConfigError, match="usage"):
        build(Countdown.Config, {"usage": "twice"})


@given(
    numbers=st.lists(st.integers(1, 100), min_size=2, max_size=5),
    ops=st.lists(st.sampled_from("+-*/"), min_size=4, max_size=4),
    data=st.data(),
)
def test_any_valid_game_solution_scores_one(numbers, ops, data):
    """A left-nested expression over a subset of the numbers, with the target set to its value, scores 1."""
    used = data.draw(st.permutations(numbers).map(lambda p: p[: max(2, len(p) - 1)]))
    text, value = str(used[0]), Fraction(used[0])
    for n, op in zip(used[1:], ops):
        text = f"({text}) {op} {n}"
        value = {"+": value + n, "-": value - n, "*": value * n, "/": value / n}[op]
    if value.denominator != 1:
        return  # the game's target is an integer
    game = {"target": int(value), "numbers": numbers}
    assert judge(f"<answer>{text}</answer>", metadata=game) == Verdict(score=1.0, reason="correct")
