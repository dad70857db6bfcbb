"""``multiple_choice``: the chosen letter in every usual form, ambiguity, configurable choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmix_core.config import build
from lmix_core.errors import ConfigError
from lmix_core.rewards.multiple_choice import MultipleChoice
from lmix_core.types import RewardInput, Verdict


def judge(completion: str, reference: str = "B", **params) -> Verdict:
    verifier = MultipleChoice(build(MultipleChoice.Config, params))
    return verifier.score_one(RewardInput(prompt="", completion=completion, reference=reference))


@pytest.mark.parametrize(
    "completion",
    [
        "(B)",
        "B.",
        "**B**",
        "B",
        "b",
        "B) Paris",
        "The answer is B",
        "The answer is B.",
        "the answer is (b).",
        "Answer: b",
        "Answer: **B**",
        "After weighing the options, the correct answer is: B. Because A is wrong.",
        "Comparing (A) and (C) with the text... Final answer: (B)",
        "\\boxed{B}",
        "\\boxed{\\text{B}}",
        "Let me think.\nB. It is the capital.",
        "I am confident in **B** here.",
    ],
)
def test_every_answer_form_is_read(completion):
    """Each usual way of naming the choice is read as B."""
    assert judge(completion) == Verdict(score=1.0, reason="correct")


@pytest.mark.parametrize(
    "completion",
    [
        "The answer is B or C",
        "Answer: A, C",
        "(B) or maybe (C)",
        "**A** ... **D**",
    ],
)
def test_several_letters_are_ambiguous(completion):
    """A completion naming two or more different letters scores 0 with reason 'ambiguous: ...'."""
    v = judge(completion)
    assert v.score == 0.0 and v.reason.startswith("ambiguous")


def test_statement_wins_over_discussion():
    """Letters discussed in the reasoning do not make a clear final statement ambiguous."""
    assert judge("(A) is wrong and (C) is too. The answer is B.") == Verdict(score=1.0, reason="correct")


def test_articles_and_words_are_not_choices():
    """'a' as an article and letters inside words are not read as choices."""
    assert judge("The answer is a bit unclear.", reference="A") == Verdict(
        score=0.0, reason="no choice found"
    )
    assert judge("A good question without a choice.", reference="A") == Verdict(
        score=0.0, reason="no choice found"
    )


def test_wrong_choice_reason():
    """A clear wrong choice says what was picked and expected."""
    assert judge("The answer is (C).") == Verdict(score=0.0, reason="wrong: got C expected B")


def test_configurable_choices():
    """choices='ABCDEFGHIJ' (MMLU-Pro) accepts J; the default ABCD does not read E as a choice."""
    assert judge("The answer is J", reference="J", choices="ABCDEFGHIJ").score == 1.0
    assert judge("The answer is E", reference="A") == Verdict(score=0.0, reason="no choice found")


def test_reference_outside_choices():
    """A reference that is not a choice letter scores 0 with a reason naming it."""
    assert judge("(B)", reference="Paris").reason == "reference 'Paris' is not one of ABCD"
    assert judge("(B)", reference="(b)").score == 1.0


def test_choices_validation():
    """choices must be 2-26 distinct upper-case letters."""
    for bad in ["A", "abcd", "AAB", "AB1"]:
        with pytest.raises(ConfigError, match="'choices' must"):
            build(MultipleChoice.Config, {"choices": bad})


# -- the corpus -------------------------------------------------------------------------------------------------
CORPUS = Path(__file__).with_name("multiple_choice_corpus.jsonl")
#: Share of the corpus read as expected; docs/components/rewards.md reports the same figure.
CORPUS_ACCURACY = 155 / 156


def corpus_rows() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def outcome(completion: str, choices: str = "ABCD") -> str:
    """The corpus's notation for what the verifier read: a letter, 'none' or 'ambiguous'."""
    chosen = MultipleChoice(MultipleChoice.Config(choices=choices)).choose(completion)
    return "none" if not chosen else "ambiguous" if len(chosen) > 1 else chosen[0]


def test_corpus_accuracy_and_must_pass_cases():
    """Over the corpus (156 cases, 13 families, hard negatives included) the verifier reads what is expected at
    least as often as the docs say, and every case marked 'must' is read as expected."""
    rows = corpus_rows()
    families = {row["family"] for row in rows}
    assert len(rows) >= 150 and len(families) >= 12
    misses = [row for row in rows if outcome(row["completion"], row.get("choices", "ABCD")) != row["expect"]]
    assert [row for row in misses if row.get("must")] == []
    assert 1 - len(misses) / len(rows) >= CORPUS_ACCURACY - 1e-9, misses


def test_verdicts_follow_the_reading():
    """The verdict scores 1 exactly when the letter read is the reference, for every corpus case with a letter."""
    for row in corpus_rows():
        if row["expect"] in ("none", "ambiguous") or "choices" in row:
            continue
        for reference in "ABCD":
            verdict = judge(row["completion"], reference=reference)
            got = outcome(row["completion"])
            assert verdict.score == float(got == reference), (row, reference, verdict)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(
            [
                "The answer is",
                "Answer:",
                "Option",
                "is correct",
                "not",
                "**",
                "(",
                ")",
                "答案：",
                "الإجابة:",
                "\n",
                " ",
            ]
            + list("ABCDEFGHIJabcdeＥＦ")
            + ["ب", "هـ", "و"]
        ),
        max_size=12,
    ).map("".join)
)
def test_a_letter_outside_the_choices_is_never_returned(text):
    """Whatever the text, the letters read are among the configured choices."""
    assert set(MultipleChoice(MultipleChoice.Config(choices="ABC")).choose(text)) <= set("ABC")
    assert set(MultipleChoice.default().choose(text)) <= set("ABCD")


def test_multilingual_references():
    """A full-width or Arabic reference letter is read like its Latin letter."""
    assert judge("答案：B", reference="Ｂ").score == 1.0
    assert judge("الإجابة: ج", reference="ج").score == 1.0
    assert judge("Answer: C", reference="E").reason == "reference 'E' is not one of ABCD"


def test_the_questions_own_choices_come_from_metadata():
    """metadata['choices'] (as the mmlu adapter writes it) sets the letters per question: with three options D is
    never read nor accepted as a reference; with five, E is read although the Config says ABCD."""
    verifier = MultipleChoice.default()

    def verdict(completion: str, reference: str, options: list) -> Verdict:
        sample = RewardInput(
            prompt="", completion=completion, reference=reference, metadata={"choices": options}
        )
        return verifier.score_one(sample)

    three, five = ["red", "green", "blue"], ["1", "2", "3", "4", "5"]
    assert verdict("The answer is D.", "A", three) == Verdict(score=0.0, reason="no choice found")
    assert verdict("(D)", "D", three).reason == "reference 'D' is not one of ABC"
    assert verdict("The answer is E.", "E", five) == Verdict(score=1.0, reason="correct")
    assert (
        verdict("The answer is C.", "C", "not a list").score == 1.0
    )  # unusable metadata: the Config's letters
