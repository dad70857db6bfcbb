"""``multiple_choice``: MMLU-style letter answers."""

from __future__ import annotations

import re
from typing import final

import attrs

from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.rewards.math import last_boxed, last_match
from lmix_core.types import RewardInput, Verdict

_STATEMENT_RE = re.compile(r"(?i)\b(?:final\s+|correct\s+)?(?:answer|choice|option)\s*(?:is\b|:)[\s:]*")
_SENTENCE_END_RE = re.compile(r"[.;!?](?:\s|$)")
_MARKUP = " \t\r\n*_`$.:,;!()[]{}"
#: How far past "The answer is" the chosen letter may sit.
_STATEMENT_CHARS = 60
#: How much of the text is searched for formatted letters when nothing states the answer.
_SCAN_CHARS = 20_000


def _valid_choices(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not (2 <= len(value) <= 26 and value.isascii() and value.isalpha() and value.isupper()):
        raise ValueError(f"'{attribute.name}' must be 2 to 26 upper-case letters (got {value!r})")
    if len(set(value)) != len(value):
        raise ValueError(f"'{attribute.name}' must not repeat a letter (got {value!r})")


@final
class MultipleChoice(RewardVerifier):
    r"""Whether the completion picks the reference letter, 1.0 or 0.0.

    The chosen letter is read from, in this order:

    1. the last answer statement ("The answer is (B)", "Answer: b", "the correct option is **C**"): the letters
       named within a few words after it, lower-case ones only when they stand alone or formatted, so that
       "the answer is a bit unclear" names nothing;
    2. the last ``\boxed{B}``;
    3. a completion that is just the letter (``B``, ``b``, ``(B)``, ``**B.**``);
    4. formatted letters anywhere: ``(B)``, ``**B**``, ``\text{B}``, a line (or the text) starting ``B.``,
       ``B)`` or ``B:``.

    A rule that finds two or more different letters ("The answer is B or C", "(B) or maybe (C)") scores 0 with
    reason ``ambiguous: B, C``; later rules are not consulted.
    The reference is a letter (``B``, ``(b)``); a reference outside ``choices`` scores 0 with a reason saying so.
    """

    role = "correctness"

    @attrs.frozen(kw_only=True)
    class Config:
        """Parameters of :class:`MultipleChoice`.

        Attributes:
            choices: the option letters, upper case (default ``ABCD``, as MMLU; ``ABCDEFGHIJ`` for MMLU-Pro).
        """

        choices: str = attrs.field(default="ABCD", validator=_valid_choices)

    def _letters(self, text: str, *, lower: bool) -> list[str]:
        """Choice letters standing alone in ``text``; lower-case ones only when ``lower``."""
        cls = self.config.choices + (self.config.choices.lower() if lower else "")
        return [m.upper() for m in re.findall(rf"(?<![A-Za-z0-9])[{cls}](?![A-Za-z0-9])", text)]

    def _formatted(self, text: str) -> list[str]:
        c = self.config.choices + self.config.choices.lower()
        pattern = rf"\(([{c}])\)|\*\*([{c}])\*\*|(?m:^[ \t]*([{c}])[.)](?:\s|$))|\\text\{{([{c}])\}}"
        return [next(g for g in m.groups() if g).upper() for m in re.finditer(pattern, text)]

    def choose(self, completion: str) -> list[str]:
        """The distinct letters the completion picks by the first rule that finds any (sorted); [] for none."""
        statement = last_match(_STATEMENT_RE, completion)
        if statement is not None:
            phrase = completion[statement.end() : statement.end() + _STATEMENT_CHARS].split("\n", 1)[0]
            phrase = _SENTENCE_END_RE.split(phrase, maxsplit=1)[0]
            bare = phrase.strip(_MARKUP)
            lone = bare if len(bare) == 1 else ""
            found = (
                self._formatted(phrase) + self._letters(phrase, lower=False) + self._letters(lone, lower=True)
            )
            if found:
                return sorted(set(found))
        boxed = last_boxed(completion, max_chars=_STATEMENT_CHARS)
        if boxed is not None:
            found = self._letters(boxed.replace("\\text", " "), lower=True)
            if found:
                return sorted(set(found))
        head = completion.strip()[:_STATEMENT_CHARS]
        bare = head.strip(_MARKUP)
        if len(head) < _STATEMENT_CHARS and len(bare) == 1 and bare.upper() in self.config.choices:
            return [bare.upper()]
        c = self.config.choices
        opening = re.match(rf"[\s*_]*([{c}])[.):](?:\s|$)", head)
        found = self._formatted(completion[-_SCAN_CHARS:]) + ([opening.group(1)] if opening else [])
        return sorted(set(found))

    def score_one(self, sample: RewardInput, /) -> Verdict:
        reference = sample.reference.strip(_MARKUP).upper()
        if len(reference) != 1 or reference not in self.config.choices:
            return Verdict(
                score=0.0, reason=f"reference {sample.reference[:20]!r} is not one of {self.config.choices}"
            )
        chosen = self.choose(sample.completion)
        if not chosen:
            return Verdict(score=0.0, reason="no choice found")
        if len(chosen) > 1:
            return Verdict(score=0.0, reason=f"ambiguous: {', '.join(chosen)}")
        if chosen[0] == reference:
            return Verdict(score=1.0, reason="correct")
        return Verdict(score=0.0, reason=f"wrong: got {chosen[0]} expected {reference}")
