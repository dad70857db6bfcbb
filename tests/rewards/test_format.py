"""``format``: required tag blocks, the boxed-answer count after them, and regex checks."""

from __future__ import annotations

import pytest

from lmix_core.config import build
from lmix_core.errors import ConfigError
from lmix_core.rewards.format import Format
from lmix_core.types import RewardInput, Verdict


def judge(completion: str, **params) -> Verdict:
    return Format(build(Format.Config, params)).score_one(RewardInput(prompt="", completion=completion))


def test_default_is_exactly_one_boxed_answer():
    """Defaults: no tags required, exactly one \\boxed answer anywhere."""
    assert judge("So \\boxed{4}.") == Verdict(score=1.0, reason="well formed")
    assert judge("no answer") == Verdict(score=0.0, reason="no boxed answers (expected exactly one)")
    assert judge("\\boxed{1} or \\boxed{2}") == Verdict(
        score=0.0, reason="2 boxed answers (expected exactly one)"
    )
    assert Format.default().role == "format"


THINK = {"required_tags": ["think"]}


def test_reasoning_block_then_one_boxed_answer():
    """required_tags=['think']: one <think> block followed by exactly one \\boxed answer."""
    assert judge("<think>2+2 is 4</think> So \\boxed{4}.", **THINK) == Verdict(
        score=1.0, reason="well formed"
    )


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("just \\boxed{4}", "missing <think>…</think>"),
        ("<think>unfinished \\boxed{4}", "missing <think>…</think>"),
        ("<think>a</think><think>b</think> \\boxed{4}", "<think>…</think> appears more than once"),
        ("</think> oops <think> \\boxed{4}", "</think> comes before <think>"),
        ("<think>a</think> no answer", "no boxed answers after </think> (expected exactly one)"),
        (
            "<think>a</think> \\boxed{1} or \\boxed{2}",
            "2 boxed answers after </think> (expected exactly one)",
        ),
        ("<think>\\boxed{4}</think> done", "no boxed answers after </think> (expected exactly one)"),
    ],
)
def test_reasoning_format_failures_say_why(completion, reason):
    """Each broken shape scores 0 with a reason naming the first failed check."""
    assert judge(completion, **THINK) == Verdict(score=0.0, reason=reason)


def test_tags_must_come_in_order():
    """required_tags=('think', 'answer') needs <think> before <answer>."""
    params = {"required_tags": ["think", "answer"], "boxed": "any"}
    assert judge("<think>x</think><answer>4</answer>", **params).score == 1.0
    assert judge("<answer>4</answer><think>x</think>", **params) == Verdict(
        score=0.0, reason="<answer> is out of order"
    )


def test_boxed_modes():
    """boxed='at_least_one' accepts several answers; 'any' accepts none."""
    assert judge("\\boxed{1}\\boxed{2}", required_tags=[], boxed="at_least_one").score == 1.0
    assert judge("plain", required_tags=[], boxed="at_least_one") == Verdict(
        score=0.0, reason="no boxed answer"
    )
    assert judge("plain", required_tags=[], boxed="any").score == 1.0


def test_pattern_fullmatch_and_search():
    """A regex pattern must match the whole completion (fullmatch) or somewhere (search)."""
    r1 = r"(?s)<think>.*?</think>\s*<answer>.*?</answer>"  # DeepSeek-R1's format reward
    base = {"required_tags": [], "boxed": "any", "pattern": r1}
    assert judge("<think>a\nb</think>\n<answer>4</answer>", **base).score == 1.0
    assert judge("<think>a</think><answer>4</answer> trailing", **base) == Verdict(
        score=0.0, reason="does not fullmatch the pattern"
    )
    assert judge("<think>a</think><answer>4</answer> trailing", **base, mode="search").score == 1.0


def test_config_validation():
    """A broken regex or a tag with markup in it is refused when the Config is built."""
    with pytest.raises(ConfigError, match="'pattern' must be a valid regular expression"):
        build(Format.Config, {"pattern": "(unclosed"})
    with pytest.raises(ConfigError, match="'required_tags' must hold bare tag names"):
        build(Format.Config, {"required_tags": ["<think>"]})
    with pytest.raises(ConfigError, match="'required_tags' must hold bare tag names"):
        build(Format.Config, {"required_tags": ["think\n"]})  # the whole name must match, not up to a newline
    assert Format.Config(required_tags="answer").required_tags == ("answer",)
