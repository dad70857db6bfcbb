"""``exact_match``: normalisation steps and where the answer is read."""

from __future__ import annotations

import pytest

from lmix_core.config import build
from lmix_core.errors import ConfigError
from lmix_core.rewards.exact_match import ExactMatch
from lmix_core.types import RewardInput, Verdict


def judge(completion: str, reference: str, **params) -> Verdict:
    verifier = ExactMatch(build(ExactMatch.Config, params))
    return verifier.score_one(RewardInput(prompt="", completion=completion, reference=reference))


def normalized(text: str, *steps: str) -> str:
    return ExactMatch(ExactMatch.Config(normalize=steps)).normalized(text)


def test_default_normalisation():
    """Defaults: numbers canonical, lower case, whitespace collapsed and stripped."""
    assert judge("  The  Eiffel\nTower ", "the eiffel tower") == Verdict(score=1.0, reason="match")
    assert judge("1,000.50 euros", "1000.5 EUROS").score == 1.0
    assert judge("Paris.", "Paris") == Verdict(score=0.0, reason="no match: got 'paris.' expected 'paris'")


@pytest.mark.parametrize(
    ("text", "steps", "expected"),
    [
        ("  a  b  ", ("strip",), "a  b"),
        ("a \n\t b", ("collapse_whitespace",), "a b"),
        ("ABC", ("lower",), "abc"),
        ("Hello, world! (yes)_", ("strip_punctuation",), "Hello world yes"),
        ("pi is 3.14, not 3,14.", ("strip_punctuation",), "pi is 3.14 not 3,14"),
        ("1,000 +3 007 2.50 -0.0 1.2.3", ("numbers",), "1000 3 7 2.5 0 1.2.3"),
        ("x2 3rd", ("numbers",), "x2 3rd"),
        (
            "  Hi,  1,000  ",
            ("strip", "lower", "collapse_whitespace", "strip_punctuation", "numbers"),
            "hi 1000",
        ),
    ],
)
def test_each_step(text, steps, expected):
    """Each normalisation step does what its name says (order fixed: numbers, lower, punct, space, strip)."""
    assert normalized(text, *steps) == expected


def test_no_normalisation_compares_raw():
    """normalize=() compares the raw strings."""
    assert judge("Paris", "Paris", normalize=[]).score == 1.0
    assert judge("Paris ", "Paris", normalize=[]).score == 0.0


def test_answer_sources():
    """answer='boxed' and 'answer_tag' read the last boxed answer or <answer> block."""
    assert judge("so \\boxed{x} then \\boxed{Paris}", "paris", answer="boxed").score == 1.0
    assert judge("no box", "paris", answer="boxed") == Verdict(score=0.0, reason="no boxed answer")
    assert judge("<answer>Rome</answer><answer>Paris</answer>", "paris", answer="answer_tag").score == 1.0
    assert judge("<answer>Paris", "paris", answer="answer_tag") == Verdict(
        score=0.0, reason="no <answer> block"
    )


def test_config_validation():
    """Unknown steps and answer sources are refused."""
    with pytest.raises(ConfigError, match="'normalize' must be .*'numbers'"):
        build(ExactMatch.Config, {"normalize": ["upper"]})
    with pytest.raises(ConfigError, match="answer"):
        build(ExactMatch.Config, {"answer": "first_line"})
