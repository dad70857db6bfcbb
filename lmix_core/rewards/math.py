"""``math``: final-answer correctness for math problems, decided by math-verify."""

from __future__ import annotations

import functools
import re
import threading
from collections import deque
from typing import Literal, final

import attrs

from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.types import RewardInput, Verdict

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_ANSWER_IS_RE = re.compile(r"(?i)\b(?:final\s+)?answer\s*(?:is\b|:)[\s:]*")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_INTEGER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_DIGIT_RUN_RE = re.compile(r"\d+")
# A power whose exponent itself starts with a numeric power: 9^{9^{9}}, 2^3^4.
_POWER_TOWER_RE = re.compile(r"\^\s*\{?\s*[\d.\s]+\}?\s*\^")
_EXPONENT_RE = re.compile(r"\^\s*\{?\s*(\d+)")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")
_MARKUP = " \t\r\n*`$.:"


def last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last non-overlapping match of ``pattern`` in ``text`` (one linear scan), or None."""
    last = deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None


def last_boxed(text: str, *, max_chars: int = 1000) -> str | None:
    r"""Contents of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, with nested braces.

    Escaped braces (``\{``) do not count. The scan looks at most ``max_chars`` characters past the opening brace,
    so the cost is bounded whatever the text.

    Returns:
        The contents without the outer braces, or None when there is no ``\boxed{`` or the last one does not close
        within ``max_chars`` characters.
    """
    opening = last_match(_BOXED_RE, text)
    if opening is None:
        return None
    depth = 1
    start = opening.end()
    for m in _BRACE_RE.finditer(text, start, min(len(text), start + max_chars + 1)):
        token = m.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return text[start : m.start()]
    return None


def answer_is(text: str, *, max_chars: int = 1000) -> str | None:
    """The phrase after the last "The answer is" / "Answer:" in ``text`` (to the end of its line or sentence).

    Markdown emphasis, ``$`` delimiters and a trailing full stop are stripped. Returns None when there is no such
    phrase or it is empty.
    """
    found = last_match(_ANSWER_IS_RE, text)
    if found is None:
        return None
    rest = text[found.end() : found.end() + max_chars + 1]
    rest = rest.split("\n", 1)[0]
    end = _SENTENCE_END_RE.search(rest)
    if end is not None:
        rest = rest[: end.start()]
    rest = rest.strip(_MARKUP)
    if rest.startswith("\\(") and rest.endswith("\\)"):
        rest = rest[2:-2].strip()
    return rest or None


def last_number(text: str) -> str | None:
    """The last number in ``text`` (integers, decimals, ``a/b``; thousands separators removed), or None."""
    found = last_match(_NUMBER_RE, text)
    if found is None:
        return None
    return found.group().rstrip(",").replace(",", "")


def _strip_delimiters(text: str) -> str:
    text = text.strip().strip("$").strip()
    boxed = last_boxed(text, max_chars=len(text))
    return (boxed if boxed is not None else text).strip()


def _compact(text: str) -> str:
    return "".join(text.split())


@final
class Math(RewardVerifier):
    r"""Correctness of a math completion's final answer, 1.0 or 0.0.

    The answer is extracted from the completion, in this order:

    1. the last ``\boxed{...}`` (nested braces allowed); a last ``\boxed{`` that never closes scores 0
       (``unclosed \boxed``) without trying the other rules, since the model was cut off mid-answer;
    2. the phrase after the last "The answer is" / "Answer:";
    3. the last number in the text, when ``fallback = "last_number"``.

    Equivalence with the reference is decided by the ``math-verify`` library (``parse`` then ``verify``; the
    verifier used by TRL, NeMo-RL, ROLL, AReaL, LUFFY and HPT), after a cheap pre-check: identical strings (ignoring
    whitespace and ``$``) are correct and two different plain integers are wrong without
    calling it. Parsed answers are cached per process (references repeat across a group's rollouts).

    Answers that would make sympy run for minutes are refused before parsing with reason ``answer too costly``:
    longer than ``max_answer_chars``, a digit run over ``max_answer_chars // 2`` digits, a power tower with a numeric
    base (``9^{9^{9}}``), an exponent above ``max_exponent``, or braces nested deeper than ``max_depth``. The
    reward pool's per-sample time limit remains the real guarantee for anything else.

    Reasons: ``correct``, ``wrong: got '12' expected '13'``, ``no answer found``, ``unclosed \boxed``,
    ``answer too costly: ...``, ``no reference answer``.
    """

    role = "correctness"

    @attrs.frozen(kw_only=True)
    class Config:
        """Parameters of :class:`Math`.

        Attributes:
            fallback: ``last_number`` takes the last number when there is neither a boxed answer nor an
                "answer is" phrase; ``none`` scores such completions 0 (``no answer found``). [U] default
                ``last_number`` (lenient, as most math graders for GSM8K-style data).
            max_answer_chars: longest extracted answer that is judged (longer ones are ``answer too costly``).
            max_exponent: largest literal exponent judged; ``10^{100000000}`` would make sympy build a 10^8-digit
                integer.
            max_depth: deepest brace nesting judged (latex2sympy slows down sharply with depth).
            verify_timeout_s: math-verify's own SIGALRM limit per parse/verify call, applied only on the main thread
                (0 = off). Inside the reward pool the pool's per-sample limit (2 s by default) fires first.
        """

        fallback: Literal["last_number", "none"] = attrs.field(
            default="last_number", validator=attrs.validators.in_(("last_number", "none"))
        )
        max_answer_chars: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
        max_exponent: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))
        max_depth: int = attrs.field(default=32, validator=attrs.validators.ge(1))
        verify_timeout_s: int = attrs.field(default=5, validator=attrs.validators.ge(0))

    def extract(self, completion: str) -> str | None:
        r"""The final answer of ``completion`` per the rules above; None when there is none.

        An unclosed last ``\boxed{`` gives None as well (:meth:`score_one` reports it separately).
        """
        if _BOXED_RE.search(completion) is not None:
            return last_boxed(completion, max_chars=len(completion))
        found = answer_is(completion, max_chars=self.config.max_answer_chars)
        if found is None and self.config.fallback == "last_number":
            found = last_number(completion)
        return found

    def _too_costly(self, answer: str) -> str | None:
        cfg = self.config
        if len(answer) > cfg.max_answer_chars:
            return f"{len(answer)} characters"
        if any(len(run) > cfg.max_answer_chars // 2 for run in _DIGIT_RUN_RE.findall(answer)):
            return "a number with too many digits"
        if _POWER_TOWER_RE.search(answer) is not None:
            return "a numeric power tower"
        for m in _EXPONENT_RE.finditer(answer):
            if len(m.group(1)) > 12 or int(m.group(1)) > cfg.max_exponent:
                return f"exponent above {cfg.max_exponent}"
        depth = deepest = 0
        for m in _BRACE_RE.finditer(answer):
            depth += {"{": 1, "}": -1}.get(m.group(), 0)
            deepest = max(deepest, depth)
        if deepest > cfg.max_depth:
            return f"braces nested {deepest} deep"
        return None

    def score_one(self, sample: RewardInput, /) -> Verdict:
        reference = _strip_delimiters(sample.reference)
        if not reference:
            return Verdict(score=0.0, reason="no reference answer")
        answer = self.extract(sample.completion)
        if answer is None:
            if _BOXED_RE.search(sample.completion) is not None:
                return Verdict(score=0.0, reason="unclosed \\boxed")
            return Verdict(score=0.0, reason="no answer found")
        answer = answer.strip().strip("$").strip()
        if not answer:
            return Verdict(score=0.0, reason="no answer found")
        costly = self._too_costly(answer)
        if costly is not None:
            return Verdict(score=0.0, reason=f"answer too costly: {costly}")
        costly = self._too_costly(reference)
        if costly is not None:
            return Verdict(score=0.0, reason=f"reference too costly: {costly}")
        if _equivalent(reference, answer, self._timeout()):
            return Verdict(score=1.0, reason="correct")
        return Verdict(score=0.0, reason=f"wrong: got {_short(answer)} expected {_short(reference)}")

    def _timeout(self) -> int | None:
        on_main = threading.current_thread() is threading.main_thread()
        return self.config.verify_timeout_s if on_main and self.config.verify_timeout_s > 0 else None


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _plain_integer(text: str) -> int | None:
    compact = _compact(text)
    if _INTEGER_RE.fullmatch(compact) is None:
        return None
    return int(compact.replace(",", ""))


@functools.lru_cache(maxsize=4096)
def _equivalent(reference: str, answer: str, timeout: int | None) -> bool:
    """Whether ``answer`` equals ``reference``: exact pre-check, then math-verify (cached per process)."""
    if _compact(reference) == _compact(answer):
        return True
    ref_int, ans_int = _plain_integer(reference), _plain_integer(answer)
    if ref_int is not None and ans_int is not None:
        return ref_int == ans_int
    from math_verify import verify

    gold = _parse(f"${reference}$", timeout)
    pred = _parse(f"\\boxed{{{answer}}}", timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


@functools.lru_cache(maxsize=4096)
def _parse(text: str, timeout: int | None) -> list:
    from math_verify import parse

    return parse(text, parsing_timeout=timeout)  # type: ignore[arg-type]
