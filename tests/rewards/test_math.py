"""``math``: answer extraction in every supported form, and equivalence through math-verify."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

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


def test_fallback_is_configurable():
    """fallback='none' ignores bare numbers; 'final_number' (default) takes one that ends the text;
    'last_number' takes the last number anywhere."""
    assert judge("it is 9", "9").score == 1.0
    assert judge("it is 9", "9", fallback="none") == Verdict(score=0.0, reason="no answer found")
    assert judge("The answer is 9", "9", fallback="none").score == 1.0
    assert judge("9 apples are left over", "9") == Verdict(score=0.0, reason="no answer found")
    assert judge("9 apples are left over", "9", fallback="last_number").score == 1.0


@pytest.mark.parametrize(
    ("completion", "reference"),
    [
        ("45*3=135\n23+135=158\n158-17=141", "141"),  # the demo's worked lines without the box
        ("So the total is 18.", "18"),
        ("So she pays 18 dollars.", "18"),  # one unit after the number
        ("Therefore $x = -7$.", "-7"),
        ("The total comes to **1,234**", "1234"),
        ("That leaves 3/4", "0.75"),
        ("Then 50%", "50"),
        ("#### 72", "72"),  # GSM8K's answer line
        ("Answer: the smallest such k is 12.", "12"),  # an answer clause that is a sentence
        ("Final answer: the probability is $\\frac{1}{4}$.", "0.25"),
        ("The answer is 18 dollars", "18"),
    ],
)
def test_final_answer_positions(completion, reference):
    """Strict default: a number that ends the text (or an answer clause) in a final-answer position is read."""
    assert judge(completion, reference) == Verdict(score=1.0, reason="correct")


@pytest.mark.parametrize(
    ("completion", "reference", "reason"),
    [
        # number spraying: a repeated number, a run of candidates, alternatives
        ("$3 $3 $3 $3 $3 $3 $3 $3 ...", "3", "repeated answer: 3 (8 times)"),
        ("3\n3\n3\n3", "3", "repeated answer: 3 (4 times)"),
        ("\\$3 \\$3 \\$3", "3", "repeated answer: 3 (3 times)"),
        ("It is 3 or maybe 4", "4", "several candidate answers"),
        ("either 4", "4", "several candidate answers"),
        (
            "1 2 3 4 5 6 7 8 9 10 11 12",
            "12",
            "wrong: got '1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12' expected '12'",
        ),
        ("The candidates are 3, 4, 5", "5", "wrong: got '3, 4, 5' expected '5'"),
        # several candidate answers stated or boxed
        ("The answer is 3 or 4.", "4", "wrong: got '3 or 4' expected '4'"),
        ("\\boxed{3, 4, 5}", "4", "wrong: got '3, 4, 5' expected '4'"),
        ("Answer: x = 3 or x = 4", "4", "wrong: got 'x = 3 or x = 4' expected '4'"),
        ("The answer is either 3 or 4", "4", "wrong: got 'either 3 or 4' expected '4'"),
        # numbers that are not in a final-answer position
        ("We start from 9 and give up", "9", "no answer found"),
        ("so the result is x^2", "2", "no answer found"),
        ("So 7 apples and 9 pears remain in the basket", "9", "no answer found"),
    ],
)
def test_reward_hacking_does_not_score(completion, reference, reason):
    """Degenerate and hedged outputs score 0 under the default fallback, with a reason saying why."""
    assert judge(completion, reference) == Verdict(score=0.0, reason=reason)


def test_answer_lists_only_equal_list_references():
    """A run of different numbers is read as a list: right against a list reference, wrong against one of them."""
    assert judge("The roots are 1, 2, 3", "1, 2, 3").score == 1.0
    assert judge("The roots are 1, 2, 3", "3").score == 0.0


def test_demo_completions_are_scored_by_the_strict_default():
    """The demo task's worked solutions in every style score 1 against their answer (boxed, as the demo writes
    them); without the box, the short and place-value styles' last line still gives the answer."""
    from lmix_core.demo.task import generate

    for style in ("short", "columns", "place_value"):
        for row in generate(8, seed=3, levels=(1, 2, 3), style=style):
            assert judge(row["solution"], row["answer"]) == Verdict(score=1.0, reason="correct"), row
            unboxed = row["solution"].rsplit("\n\\boxed", 1)[0]
            if style != "columns":  # "1+93: 1+3=4, 0+9=9, 94" ends in a run of numbers, not one answer
                assert judge(unboxed, row["answer"]) == Verdict(score=1.0, reason="correct"), unboxed
    assert judge("23+45*3-17=141\n\\boxed{142}", "141").score == 0.0


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
        ("{" * 40 + "1" + "}" * 40, "brackets nested 40 deep"),
        ("(" * 900, "brackets nested 900 deep"),
        ("x" * 1001, "1001 characters"),
    ],
)
def test_costly_answers_are_refused_before_sympy(answer, why):
    """Answers that would make sympy run for minutes are refused at once with the reason."""
    assert judge(f"\\boxed{{{answer}}}", "1") == Verdict(score=0.0, reason=f"answer too costly: {why}")


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("100000!", "a factorial above 1000!"),
        ("(10^6)!", "a factorial above 1000!"),
        ("\\binom{100000}{50000}", "a binomial coefficient above 1000"),
        ("\\dbinom{10^6}{3}", "a binomial coefficient above 1000"),
        ("\\int_0^{\\infty} e^{-x^2} dx", "\\int, which the reference does not contain"),
        ("\\sum_{n=1}^{\\infty} \\frac{(-1)^n}{\\ln n}", "\\sum, which the reference does not contain"),
        ("\\prod_{k=1}^{n} k", "\\prod, which the reference does not contain"),
        ("\\lim_{x \\to 0} \\frac{\\sin x}{x}", "\\lim, which the reference does not contain"),
        ("\\Gamma(10^6)", "\\Gamma, which the reference does not contain"),
        ("\\zeta(1001)", "\\zeta, which the reference does not contain"),
        ("(a+b+c+d)^{20}", "a power whose expansion has 1771 terms"),
        ("\\left(x+y+z\\right)^{30}", "a power whose expansion has 496 terms"),
    ],
)
def test_costly_expressions_are_refused_in_microseconds(answer, why):
    """Factorials, binomials, unevaluated calculus, special functions and big polynomial powers are refused by
    the screen, well under 0.1 s of CPU time, instead of being stopped by the pool at its limit."""
    start = time.process_time()
    verdict = judge(f"\\boxed{{{answer}}}", "7")
    assert time.process_time() - start < 0.05
    assert verdict == Verdict(score=0.0, reason=f"answer too costly: {why}")


def test_screen_lets_ordinary_answers_through():
    """Small factorials and binomials, symbolic ones, low powers, and operators the reference has too are judged."""
    assert judge("\\boxed{5!}", "120").score == 1.0
    assert judge("\\boxed{\\binom{5}{2}}", "10").score == 1.0
    assert judge("\\boxed{(n+1)!}", "(n+1)!").score == 1.0
    assert judge("\\boxed{(x+1)^2}", "x^2+2x+1").score == 1.0
    assert judge("\\boxed{\\int_0^1 x\\,dx}", "\\int_0^1 x dx").score == 1.0
    assert judge("\\boxed{\\sum_{k=1}^{n} k}", "\\sum_{k=1}^{n} k").score == 1.0  # identical: no parse
    assert judge("\\boxed{100000!}", "100000!").score == 1.0  # identical to the reference


def test_math_verify_runs_without_a_wall_clock_alarm(monkeypatch):
    """math-verify's own signal.alarm timeouts are off: the pool's limit is the only one, so a verdict never
    depends on wall time. An alarm set during judging would raise here."""

    def forbidden(*args):
        raise AssertionError("signal.alarm used while judging")

    monkeypatch.setattr(signal, "alarm", forbidden)
    assert judge("\\boxed{\\frac{14}{8}}", "1.75") == Verdict(score=1.0, reason="correct")
    assert judge("\\boxed{\\sqrt{50}}", "5\\sqrt{3}").score == 0.0


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


CORPUS = Path(__file__).with_name("math_corpus.jsonl")


def test_corpus_verdicts():
    """Every case of the math corpus (76 in 6 families: equivalent and different forms, extraction, reward hacking,
    answer lists, costly expressions) gets the expected score, and the expected reason where one is given."""
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 70 and len({row["family"] for row in rows}) == 6
    verifier = Math.default()
    misses = []
    for row in rows:
        v = verifier.score_one(
            RewardInput(prompt="", completion=row["completion"], reference=row["reference"])
        )
        if v.score != row["expect"] or not v.reason.startswith(row.get("reason", "")):
            misses.append((row, v))
    assert misses == []
