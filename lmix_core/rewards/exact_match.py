"""``exact_match``: string equality after configurable normalisation."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Literal, final

import attrs

from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.rewards.math import last_boxed
from lmix_core.types import RewardInput, Verdict

Step = Literal["numbers", "lower", "strip_punctuation", "collapse_whitespace", "strip"]
#: Normalisation steps in the order they are applied, whatever order a recipe lists them in.
STEPS: tuple[Step, ...] = ("numbers", "lower", "strip_punctuation", "collapse_whitespace", "strip")

_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")
_PUNCT_RE = re.compile(r"(?<=\d)[.,](?=\d)|([^\w\s]|_)")
_SPACE_RE = re.compile(r"\s+")
#: Numbers longer than this are left as written (Decimal would be slow and nobody writes them on purpose).
_MAX_DIGITS = 100


def _steps(instance: object, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    for step in value:
        if step not in STEPS:
            raise ValueError(f"'{attribute.name}' must hold steps from {', '.join(STEPS)} (got {step!r})")


def _number(match: re.Match[str]) -> str:
    token = match.group()
    if len(token) > _MAX_DIGITS:
        return token
    try:
        value = Decimal(token.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex only matches numbers
        return token
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "+0") else text


@final
class ExactMatch(RewardVerifier):
    """1.0 when the normalised answer equals the normalised reference, else 0.0.

    The answer is the whole completion, the last ``\\boxed{…}`` or the last ``<answer>…</answer>`` block
    (``answer``). Both strings then go through the chosen normalisation steps, always in this order:

    * ``numbers``: each number written canonically (``1,000.50`` → ``1000.5``, ``+3`` → ``3``, ``007`` → ``7``);
    * ``lower``: lower case;
    * ``strip_punctuation``: drop punctuation and symbols (``_`` included), keeping ``.`` and ``,`` between digits;
    * ``collapse_whitespace``: every run of whitespace becomes one space;
    * ``strip``: no leading or trailing whitespace.

    Reasons: ``match``, ``no match: got '…' expected '…'``, ``no boxed answer`` / ``no <answer> block``.
    """

    role = "correctness"

    @attrs.frozen(kw_only=True)
    class Config:
        """Parameters of :class:`ExactMatch`.

        Attributes:
            normalize: the steps to apply (see the class docstring); ``()`` compares the raw strings.
            answer: where the answer is read: ``completion`` (all of it), ``boxed`` (the last ``\\boxed{}``) or
                ``answer_tag`` (the last ``<answer>…</answer>``).
        """

        normalize: tuple[Step, ...] = attrs.field(
            default=("numbers", "lower", "collapse_whitespace", "strip"), converter=tuple, validator=_steps
        )
        answer: Literal["completion", "boxed", "answer_tag"] = attrs.field(
            default="completion", validator=attrs.validators.in_(("completion", "boxed", "answer_tag"))
        )

    config: Config

    def normalized(self, text: str) -> str:
        """``text`` after the configured steps."""
        steps = self.config.normalize
        if "numbers" in steps:
            text = _NUMBER_RE.sub(_number, text)
        if "lower" in steps:
            text = text.lower()
        if "strip_punctuation" in steps:
            text = _PUNCT_RE.sub(lambda m: "" if m.group(1) is not None else m.group(), text)
        if "collapse_whitespace" in steps:
            text = _SPACE_RE.sub(" ", text)
        if "strip" in steps:
            text = text.strip()
        return text

    def _answer(self, completion: str) -> str | None:
        if self.config.answer == "boxed":
            return last_boxed(completion, max_chars=len(completion))
        if self.config.answer == "answer_tag":
            start = completion.rfind("<answer>")
            end = completion.find("</answer>", start + 1)
            if start < 0 or end < 0:
                return None
            return completion[start + len("<answer>") : end]
        return completion

    def score_one(self, sample: RewardInput, /) -> Verdict:
        answer = self._answer(sample.completion)
        if answer is None:
            return Verdict(
                score=0.0, reason="no boxed answer" if self.config.answer == "boxed" else "no <answer> block"
            )
        got, expected = self.normalized(answer), self.normalized(sample.reference)
        if got == expected:
            return Verdict(score=1.0, reason="match")
        return Verdict(score=0.0, reason=f"no match: got {_short(got)} expected {_short(expected)}")


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
