"""``math``: answer extraction in every supported form, and equivalence through math-verify."""

from __future__ import annotations

import threading

import pytest

from lmix_core.config import build
from lmix_core.errors import ConfigError
from lmix_core.rewards.math import Math, answer_is, last_boxed, last_number
from lmix_core.types import RewardInput, Verdict


def judge(completion: str, reference: str, **params) -> Verdict:
    verifier = Math(build(Math.Config, params))
    return verifier.score_one(RewardInput(prompt="", completion=completion, reference=reference))


def test_last_boxed_handles_nested_and_escaped_braces():
    """The contents of the last \\boxed{...}: nested groups kept, escaped braces not counted."""
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{1} then \\boxed{2") is None  # the last one never closes
    assert last_boxed("\\boxed{" + "1" * 50 + "}", max_chars=10) is None


def test_answer_is_and_last_number():
    """'The answer is' phrases lose markup and the full stop; the last number loses thousands separators."""
    assert answer_is("So the final answer is $\\frac{3}{4}$. Done.") == "\\frac{3}{4}"
    assert answer_is("Answer: **12**") == "12"
    assert answer_is("The answer is 3.5.") == "3.5"
    assert answer_is("no phrase here") is None
    assert last_number("we get 3 apples then 1,234 pears.") == "1234"
    assert last_number("-7 and 2/3") == "2/3"
    assert last_number("none") is None


@pytest.mark.parametrize(
    ("completion", "reference"),
    [
        ("We compute ... so \\boxed{13}.", "13"),  # plain boxed
        ("First \\boxed{7}, no wait: \\boxed{\\frac{1}{2}}", "0.5"),  # last boxed, fraction vs decimal
        ("\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),  # nested braces, dfrac
        ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}"),  # needs math-verify: no string match
        ("\\boxed{x = 3}", "3"),  # an equation's right-hand side
        ("\\boxed{\\{1,2\\}}", "\\{2,1\\}"),  # sets are unordered
        ("The answer is 42.", "42"),  # 'The answer is'
        ("Answer: $\\frac{2}{4}$", "\\frac{1}{2}"),  # 'Answer:' with math delimiters
        ("Adding them gives 1,000 apples", "1000"),  # last number, thousands separator
        ("so it is 2.50 dollars", "2.5"),  # last number, decimal
        ("\\boxed{13}", "$13$"),  # reference in math delimiters
        ("\\boxed{13}", "\\boxed{13}"),  # reference boxed
    ],
)
def test_correct_answers(completion, reference):
    """Each supported answer form, equivalent to the reference, scores 1 with reason 'correct'."""
    assert judge(completion, reference) == Verdict(score=1.0, reason="correct")


def test_wrong_answer_reason_names_both():
    """A wrong answer scores 0 and says what was found and expected."""
    assert judge("\\boxed{12}", "13") == Verdict(score=0.0, reason="wrong: got '12' expected '13'")
    assert judge("\\boxed{\\frac{1}{3}}", "0.5").reason == "wrong: got '\\\\frac{1}{3}' expected '0.5'"


def test_boxed_wins_over_other_forms():
    """A boxed answer is used even when a later 'answer is' phrase or number disagrees."""
    assert judge("\\boxed{5}. The answer is 6, or 7", "5").score == 1.0


def test_last_number_fallback_is_configurable():
    """fallback='none' ignores bare numbers; 'last_number' (default) uses them."""
    assert judge("it is 9", "9").score == 1.0
    assert judge("it is 9", "9", fallback="none") == Verdict(score=0.0, reason="no answer found")
    assert judge("The answer is 9", "9", fallback="none").score == 1.0


def test_unclosed_boxed_is_not_rescued():
    """A last \\boxed{ that never closes scores 0 even though an earlier number matches."""
    assert judge("9 ... \\boxed{9", "9") == Verdict(score=0.0, reason="unclosed \\boxed")


def test_missing_answer_or_reference():
    """Nothing to judge gives reasons saying which side is missing."""
    assert judge("I do not know.", "4") == Verdict(score=0.0, reason="no answer found")
    assert judge("\\boxed{4}", "") == Verdict(score=0.0, reason="no reference answer")
    assert judge("\\boxed{}", "4") == Verdict(score=0.0, reason="no answer found")


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("9^{9^{9^{9}}}", "a numeric power tower"),
        ("10^{100000000}", "exponent above 10000"),
        ("9" * 600, "a number with too many digits"),
        ("{" * 40 + "1" + "}" * 40, "braces nested 40 deep"),
        ("x" * 1001, "1001 characters"),
    ],
)
def test_costly_answers_are_refused_before_sympy(answer, why):
    """Answers that would make sympy run for minutes are refused at once with the reason."""
    assert judge(f"\\boxed{{{answer}}}", "1") == Verdict(score=0.0, reason=f"answer too costly: {why}")


def test_harmless_powers_are_still_judged():
    """e^{x^2} (letters) and 2^{10} (small exponent) go to math-verify."""
    assert judge("\\boxed{2^{10}}", "1024").score == 1.0
    assert judge("\\boxed{e^{x^2}}", "e^{x^{2}}").score == 1.0


def test_works_off_the_main_thread():
    """Off the main thread math-verify's signal timeout is skipped instead of raising."""
    out: list[Verdict] = []
    t = threading.Thread(target=lambda: out.append(judge("\\boxed{\\frac{6}{4}}", "1.5")))
    t.start()
    t.join()
    assert out == [Verdict(score=1.0, reason="correct")]


def test_config_validation():
    """Unknown fallback modes and non-positive limits are refused with attrs wording."""
    with pytest.raises(ConfigError, match="fallback"):
        build(Math.Config, {"fallback": "first_number"})
    with pytest.raises(ConfigError, match="'max_answer_chars' must be >= 1"):
        build(Math.Config, {"max_answer_chars": 0})
