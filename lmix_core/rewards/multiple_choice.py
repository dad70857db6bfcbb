"""``multiple_choice``: MMLU-style letter answers, in English, Chinese and Arabic conventions."""

from __future__ import annotations

import bisect
import functools
import re
import string
import unicodedata
from collections.abc import Mapping
from typing import Any, final

import attrs

from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.rewards.math import last_boxed, last_match
from lmix_core.types import RewardInput, Verdict

_MARKUP = " \t\r\n*_`$.:,;!()[]{}\"'"
#: How far past "The answer is" the chosen letter may sit.
_STATEMENT_CHARS = 60
#: How much of the end of the text is searched for claims and formatted letters.
_SCAN_CHARS = 20_000
#: Arabic option letters in MMLU order (abjad: alif, ba, jim, dal, ha, waw, zay, ha, ta, ya), read as A, B, C, ...
_ARABIC_LETTERS = "أبجدهوزحطي"
_ARABIC_RE = re.compile(rf"(?<![\u0600-\u06ff])([{_ARABIC_LETTERS}])(?![\u0600-\u06ff])")

# Answer statements: the letter follows. English, Chinese (MMLU/CMMLU/C-Eval style) and Arabic (MMMLU style).
_VERB = (
    r"(?:\s+(?:here|then|now|clearly|therefore|thus))?\s*(?:is\b|would\s+be\b|must\s+be\b|should\s+be\b|:)"
)
_STATEMENT_RE = re.compile(
    r"(?i)(?:"
    rf"\b(?:(?:the|my|final|correct|right|true|best|only)\s+)*answer{_VERB}"
    rf"|\b(?:the|my|final|correct|right|true|best|only)\s+(?:(?:correct|right|true|best|only)\s+)*"
    rf"(?:choice|option|claim|statement|selection|pick){_VERB}"
    r"|\b(?:correct|right|true|best)\s+one\s+is\b"
    r"|\bi(?:\s+would|\s+will|'ll|'d)?\s+(?:choose|pick|select|go\s+with)\b"
    r"|(?:正确)?答案\s*(?:应该|应)?\s*(?:是|为|選|选|:)?|答\s*:|选(?:择)?(?![项項择题])"
    r"|(?:正确|正確)的?(?:选项|選項)\s*(?:是|为)?"
    r"|(?:ال)?(?:إجابة|جواب)(?:\s+(?:ال)?(?:صحيحة|صحيح|نهائية|نهائي))?(?:\s+(?:هي|هو))?\s*:?"
    r")[\s:]*"
)
# Where a statement's own letter ends and its justification or a contrast begins.
_CUT_RE = re.compile(
    r"(?i)\b(?:because|since|as|given|due\s+to|whereas|while|unlike|rather\s+than|instead\s+of|but\s+not)\b"
    r"|[;—–]|\s-\s|因为|由于|而不是|لأن"
)
_SENTENCE_END_RE = re.compile(r"[.!?。！？](?:\s|$)|[。！？\n]")
_NEGATION_RE = re.compile(
    r"(?i)(?:\bnot|n't|\bnever|\bexcept|不是|非|ليس)\s*(?:(?:option|choice)\s*)?[*_(\s]*\Z"
)
_JUSTIFICATION_TAIL = 80


def _valid_choices(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not (2 <= len(value) <= 26 and value.isascii() and value.isalpha() and value.isupper()):
        raise ValueError(f"'{attribute.name}' must be 2 to 26 upper-case letters (got {value!r})")
    if len(set(value)) != len(value):
        raise ValueError(f"'{attribute.name}' must not repeat a letter (got {value!r})")


@attrs.frozen
class _Patterns:
    """The regular expressions for one set of choices (letters outside it never match)."""

    letter: re.Pattern[str]
    lower: re.Pattern[str]
    leading: re.Pattern[str]
    connector: re.Pattern[str]
    positive: re.Pattern[str]
    negative: re.Pattern[str]
    formatted: re.Pattern[str]


@functools.lru_cache(maxsize=32)
def _patterns(choices: str) -> _Patterns:
    c, cl = choices, choices + choices.lower()
    alone = r"(?<![A-Za-z0-9])"
    end = r"(?![A-Za-z0-9])"
    # A letter with optional emphasis or brackets around it: B, (B), **B**, *B*, _B_, [B].
    token = rf"(?:\*{{1,2}}|_{{1,2}})?[(\[]?{alone}([{c}]){end}[)\]]?(?:\*{{1,2}}|_{{1,2}})?"
    named = r"(?:(?i:option|choice|answer|letter|statement|claim)\s+|选项|選項)?"
    # A lower-case letter counts after "option" / "choice": "option c is right".
    token_cl = token.replace(f"[{c}]", f"[{cl}]")
    named_cl = rf"(?:(?i:option|choice|letter)\s+|选项|選項){token_cl}"
    good = r"(?i:correct|right|true|valid|accurate|the\s+(?:correct\s+|right\s+|best\s+)?(?:answer|choice|option|one))"
    bad = (
        r"(?i:(?:not|n't)\s+(?:correct|right|true|valid|the\s+answer)|incorrect|wrong|false|invalid|inaccurate"
        r"|(?:eliminated|ruled\s+out|excluded))"
    )
    return _Patterns(
        letter=re.compile(rf"{alone}([{c}]){end}"),
        lower=re.compile(rf"{alone}([{cl}]){end}"),
        leading=re.compile(
            rf"[\s*_(\[]*(?:(?i:option|choice|letter)\s*)?[*_(\[]*"
            rf"(?:([{c}])(?![A-Za-z0-9])|([{cl}])(?:[*_)\]]+|[.:](?:\s|$)|\s*$))"
        ),
        connector=re.compile(
            rf"[*_)\]]*\s*(?:,|/|&|(?i:\bor\b|\band\b)|或|和|أو)\s*(?:(?i:option|choice)\s+)?[*_(\[]*{alone}[{cl}]{end}"
        ),
        positive=re.compile(
            rf"(?:{named}{token}|{named_cl})\s*"
            rf"(?:(?i:is|seems|would\s+be|must\s+be)\s+(?:(?i:the)\s+)?(?:(?i:only|best)\s+)?{good}"
            rf"|(?:是|为)?\s*(?:正确|對|对)(?!吗)|(?:هي|هو)?\s*(?:الصحيحة|الصحيح))"
            rf"|(?m:^)[ \t#>*_-]*(?i:choice|option|answer)\s+{token_cl}[ \t]*[.:)]?[ \t*_]*(?m:$)"
            rf"|(?i:\bwhich\s+is|\bthat\s+is|\bi\s+choose|\bi\s+pick)\s+{named_cl}"
            rf"|(?:(?i:\bit's|\bit\s+is|\bit\s+must\s+be|\bso|\bthus|\bhence|\btherefore)\s*,?\s*)"
            rf"(?:{named}{token}|{named_cl})[ \t]*[.!]?[ \t]*(?m:$)"
            rf"|(?m:^)[ \t*_-]*{token_cl}[.):][ \t*_]*(?i:correct|true|right)\b"
        ),
        negative=re.compile(
            rf"(?:{named}{token}|{named_cl})\s*(?:(?i:is|was|seems)\s+{bad}|(?i:isn't|is\s+not|:)\s*(?i:correct|right|true|wrong|incorrect|false)"
            rf"|(?:是)?\s*(?:错误|錯誤|错|不对|不正确))"
            rf"|(?:(?i:eliminate|rule\s+out|exclude|not)\s+|排除\s*|不是\s*){named}{token}"
            rf"|(?m:^)[ \t*_-]*{token_cl}[.):][ \t*_]*(?i:incorrect|false|wrong)\b"
        ),
        formatted=re.compile(
            rf"\(([{cl}])\)|\*\*([{cl}])\*\*|__([{cl}])__|(?<![*\w])\*([{cl}])\*(?![*\w])|(?<![_\w])_([{cl}])_(?![_\w])"
            rf"|\\text\{{([{cl}])\}}|(?m:^[ \t]*([{cl}])[.):](?:\s|$))|(?m:^[ \t]*([{c}])[ \t]*$)"
        ),
    )


@final
class MultipleChoice(RewardVerifier):
    r"""Whether the completion picks the reference letter, 1.0 or 0.0.

    The text is first NFKC-normalised (full-width ``Ｂ`` and ``：`` become ``B`` and ``:``), and the Arabic option
    letters (أ ب ج د ..., standing alone) are read as A, B, C, D, ... as in Arabic MMLU. The chosen letter is then
    read by the first rule that finds one; a letter that is not one of the question's is never read:

    1. the last answer statement: "The answer is (B)", "Answer: b", "the correct option is **C**", "the true claim
       is D", "I'd go with B", Chinese "答案是B" / "答案：B" / "故选B" / "正确选项为B", Arabic "الإجابة: ب" /
       "الإجابة الصحيحة هي ب". From the words after it, up to the end of the sentence: a leading letter (bare,
       formatted or after "option"), ambiguous when a second letter is joined to it ("B or C", "A, C", "B/D");
       otherwise the letters in that stretch, stopping at a justification or contrast ("because", "since",
       "rather than", ";") and skipping negated letters ("not A"). Lower-case letters count only when they stand
       alone or formatted, so "the answer is a bit unclear" names nothing;
    2. claims about options anywhere: "Option B is right", "B is the correct answer", "(C) is true", a line
       "Choice B." / "Option B", "选项B正确"; against "A is wrong", "not C", "rule out D", "C是错误的". A letter's
       last claim counts; one letter claimed correct is the choice (two or more are ambiguous);
    3. the last ``\boxed{B}``;
    4. a completion that is just the letter (``B``, ``b``, ``(B)``, ``**B.**``);
    5. formatted letters anywhere: ``(B)``, ``**B**``, ``*B*``, ``_B_``, ``\text{B}``, a line that starts ``B.``,
       ``B)`` or ``B:`` or is just ``B``; letters claimed wrong (rule 2), negated ("not (A)") or in a
       justification after the first letter of their sentence are left out.

    The question's letters are the first N when ``metadata["choices"]`` lists its N options (as the ``mmlu`` data
    adapter writes it), else ``choices``.
    A rule that finds two or more different letters ("The answer is B or C", "(B) or maybe (C)") scores 0 with
    reason ``ambiguous: B, C``; later rules are not consulted.
    The reference is a letter (``B``, ``(b)``, ``Ｂ``); a reference outside ``choices`` scores 0 with a reason saying
    so.
    """

    role = "correctness"

    @attrs.frozen(kw_only=True)
    class Config:
        """Parameters of :class:`MultipleChoice`.

        Attributes:
            choices: the option letters, upper case (default ``ABCD``, as MMLU; ``ABCDEFGHIJ`` for MMLU-Pro).
        """

        choices: str = attrs.field(default="ABCD", validator=_valid_choices)

    config: Config

    def _normalise(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text)
        latin = {a: chr(ord("A") + i) for i, a in enumerate(_ARABIC_LETTERS)}
        return _ARABIC_RE.sub(lambda m: latin[m.group(1)], text)

    def _statement(self, completion: str, p: _Patterns) -> list[str] | None:
        """Letters named by the last answer statement; None when there is no statement or it names none."""
        found = last_match(_STATEMENT_RE, completion)
        if found is None:
            return None
        phrase = completion[found.end() : found.end() + 2 * _STATEMENT_CHARS].lstrip()[:_STATEMENT_CHARS]
        end = _SENTENCE_END_RE.search(phrase)
        phrase = phrase if end is None else phrase[: end.start()]
        leading = p.leading.match(phrase)
        if leading is not None:
            letter = (leading.group(1) or leading.group(2)).upper()
            if p.connector.match(phrase, leading.end()) is not None:
                second = p.lower.search(phrase, leading.end())
                return sorted({letter, second.group(1).upper()}) if second else [letter]
            return [letter]
        cut = _CUT_RE.search(phrase)
        phrase = phrase if cut is None else phrase[: cut.start()]
        letters = [
            m.group(1) for m in p.letter.finditer(phrase) if _NEGATION_RE.search(phrase, 0, m.start()) is None
        ]
        letters += [
            next(g for g in m.groups() if g).upper()
            for m in p.formatted.finditer(phrase)
            if _NEGATION_RE.search(phrase, 0, m.start()) is None
        ]
        return sorted(set(letters)) or None

    def _claims(self, text: str, p: _Patterns) -> tuple[list[str], set[str]]:
        """Letters claimed correct and letters claimed wrong, each by its last claim ("not B is correct" is a
        claim that B is wrong)."""
        claims: list[tuple[int, str, bool]] = []
        for good, pattern in ((False, p.negative), (True, p.positive)):
            for m in pattern.finditer(text):
                negated = _NEGATION_RE.search(text, max(0, m.start() - 12), m.start()) is not None
                claims.append((m.start(), next(g for g in m.groups() if g).upper(), good and not negated))
        last = {letter: good for _, letter, good in sorted(claims)}
        return sorted(k for k, good in last.items() if good), {k for k, good in last.items() if not good}

    def _formatted(self, text: str, p: _Patterns, excluded: set[str]) -> list[str]:
        """Formatted letters that are not excluded, negated, or in a justification after their sentence's first."""
        ends = [b.end() for b in _SENTENCE_END_RE.finditer(text)]
        letters: list[str] = []
        seen_sentences: set[int] = set()
        for m in p.formatted.finditer(text):
            sentence = bisect.bisect_right(ends, m.start())
            start = ends[sentence - 1] if sentence else 0
            letter = next(g for g in m.groups() if g).upper()
            before = text[max(start, m.start() - _JUSTIFICATION_TAIL) : m.start()]
            if letter in excluded or _NEGATION_RE.search(before) is not None:
                continue
            if sentence in seen_sentences and _CUT_RE.search(before) is not None:
                continue
            seen_sentences.add(sentence)
            letters.append(letter)
        return letters

    def letters(self, metadata: Mapping[str, Any]) -> str:
        """The option letters of one question: the first N letters when ``metadata["choices"]`` is a list of N
        (2 to 26) options, as the ``mmlu`` data adapter writes it; else ``choices``."""
        options = metadata.get("choices") if isinstance(metadata, Mapping) else None
        if isinstance(options, (list, tuple)) and 2 <= len(options) <= 26:
            return string.ascii_uppercase[: len(options)]
        return self.config.choices

    def choose(self, completion: str, letters: str | None = None) -> list[str]:
        """The distinct letters the completion picks by the first rule that finds any (sorted); [] for none.

        ``letters`` are the question's option letters (default ``choices``); no other letter is ever returned.
        """
        letters = letters or self.config.choices
        p = _patterns(letters)
        text = self._normalise(completion[-_SCAN_CHARS:])
        stated = self._statement(text, p)
        if stated:
            return stated
        positive, negative = self._claims(text, p)
        if positive:
            return positive
        boxed = last_boxed(text, max_chars=_STATEMENT_CHARS)
        if boxed is not None:
            found = sorted({m.group(1).upper() for m in p.lower.finditer(boxed.replace("\\text", " "))})
            if found:
                return found
        head = text.strip()[:_STATEMENT_CHARS]
        bare = head.strip(_MARKUP)
        if len(head) < _STATEMENT_CHARS and len(bare) == 1 and bare.upper() in letters:
            return [bare.upper()]
        c = letters
        opening = re.match(rf"[\s*_]*([{c}])[.):](?:\s|$)", head)
        found = self._formatted(text, p, negative) + ([opening.group(1)] if opening else [])
        return sorted(set(found))

    def score_one(self, sample: RewardInput, /) -> Verdict:
        letters = self.letters(sample.metadata)
        reference = self._normalise(sample.reference).strip(_MARKUP).upper()
        if len(reference) != 1 or reference not in letters:
            return Verdict(score=0.0, reason=f"reference {sample.reference[:20]!r} is not one of {letters}")
        chosen = self.choose(sample.completion, letters)
        if not chosen:
            return Verdict(score=0.0, reason="no choice found")
        if len(chosen) > 1:
            return Verdict(score=0.0, reason=f"ambiguous: {', '.join(chosen)}")
        if chosen[0] == reference:
            return Verdict(score=1.0, reason="correct")
        return Verdict(score=0.0, reason=f"wrong: got {chosen[0]} expected {reference}")
