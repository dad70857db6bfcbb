"""``math``: final-answer correctness for math problems, decided by math-verify."""

from __future__ import annotations

import functools
import logging
import math
import re
from collections import deque
from typing import Literal, final

import attrs

from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.types import RewardInput, Verdict

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_BRACKET_RE = re.compile(r"\\.|[{}()\[\]]", re.DOTALL)
# "The answer is" / "Final answer:" anywhere, or GSM8K's "#### " at the start of a line.
_ANSWER_IS_RE = re.compile(r"(?im)\b(?:final\s+)?answer\s*(?:is\b|:)[\s:]*|^[ \t]*####[ \t]*")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_INTEGER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_DIGIT_RUN_RE = re.compile(r"\d+")
# A power whose exponent itself starts with a numeric power: 9^{9^{9}}, 2^3^4.
_POWER_TOWER_RE = re.compile(r"\^\s*\{?\s*[\d.\s]+\}?\s*\^")
_EXPONENT_RE = re.compile(r"\^\s*\{?\s*(\d+)")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")
_MARKUP = " \t\r\n*`$.:"

# -- the final-number rule ---------------------------------------------------------------------------------------
#: How much of the end of a text the final-number rule reads (a longer run of numbers is still seen as a run).
_TAIL_CHARS = 2000
# A number standing alone: not glued to a letter, digit, '.', '_' or '^' before it (x2, 3.5's 5, a_1, x^2).
_ALONE_NUMBER_RE = re.compile(r"(?<![\w.^])-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
# What may follow the final number: closing markup and full stops, and before them at most one unit.
_CLOSING_RE = re.compile(r"(?:[\s.!*$`_]|\\[)\]])*\Z")
_UNIT_RE = re.compile(
    r"[ \t]*(?:\\?%|°|\^\s*\{?\\circ\}?|\\(?:text|mathrm|mbox)\{[^{}\n]{0,20}\}|[A-Za-z]{1,15})\Z"
)
# Between the numbers of a run ("3 3 3", "$3$, $4$", "1; 2 and 3"): no letters, digits, '=' or other commands.
_RUN_GAP_RE = re.compile(
    r"(?:[^\w=\\]|\\[$%,;:! ]|\\q?quad\b|\\(?:text|mathrm)\{\s*(?:and|or|,)?\s*\}|\b(?:and|or)\b|_)*\Z"
)
_ALTERNATIVES_RE = re.compile(r"(?i)\b(?:or|either)\b")
_CONTRAST_RE = re.compile(r"(?i)[,;]?\s*(?:\bbut\s+)?(?:\bnot\b|\brather\s+than\b|\binstead\s+of\b)")
_NEGATED_RE = re.compile(r"(?i)(?:\bnot|n't|\bnever|\bexcept|\binstead\s+of|\brather\s+than)[\s$*]*\Z")
_LAST_SENTENCE_RE = re.compile(r"[.!?](?:\s|$)|\n")
_PROSE_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_TEXT_GROUP_RE = re.compile(r"\\(?:text|mathrm|mbox)\{[^{}]*\}")
_FINAL_MATH_RE = re.compile(r"(?:\$([^$]+)\$|\\\((.+?)\\\))[\s.!*]*\Z", re.DOTALL)

# -- the cost screen ---------------------------------------------------------------------------------------------
# Unevaluated operators and special functions: refused in an answer unless the reference has them too.
_OPERATOR_RE = re.compile(r"\\(iiint|iint|int|oint|sum|prod|lim|Gamma|zeta|psi|operatorname)(?![A-Za-z])")
_FACTORIAL_RE = re.compile(r"(?<!\\)!")
_BINOM_RE = re.compile(r"\\[dt]?binom\s*\{|\\choose(?![A-Za-z])")
_GROUP_POWER_RE = re.compile(r"[)\]]\s*\^\s*\{?\s*(\d+)")


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


def _answer_clause(text: str, *, max_chars: int) -> str | None:
    """The raw text after the last answer phrase, to the end of its line or sentence; None without a phrase."""
    found = last_match(_ANSWER_IS_RE, text)
    if found is None:
        return None
    rest = text[found.end() : found.end() + max_chars + 1]
    rest = rest.split("\n", 1)[0]
    end = _SENTENCE_END_RE.search(rest)
    return rest if end is None else rest[: end.start()]


def answer_is(text: str, *, max_chars: int = 1000) -> str | None:
    """The phrase after the last "The answer is" / "Answer:" / a line's leading ``####`` in ``text``, to the end of
    its line or sentence.

    Markdown emphasis, ``$`` delimiters and a trailing full stop are stripped. Returns None when there is no such
    phrase or it is empty.
    """
    rest = _answer_clause(text, max_chars=max_chars)
    if rest is None:
        return None
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


@attrs.frozen
class Final:
    """What :func:`final_number` found: ``answer`` (None when there is none) and, when refused, ``why``."""

    answer: str | None
    why: str = "no answer found"


def final_number(text: str) -> Final:
    """The number that ends ``text``, when it stands in a final-answer position.

    The text may end in closing markup (``$``, ``**``, ``\\)``, full stops) and, before it, one unit (a word of
    letters, ``%``, ``°``, ``\\text{cm}``). The number must stand alone: not right after ``^`` or ``_``, a letter
    or a digit. Refused (``answer`` None, ``why`` says it):

    * no such number (``no answer found``);
    * a last sentence that offers alternatives with "or" / "either" (``several candidate answers``);
    * a number right after a negation ("6, not 5", "rather than 5": ``no answer found``);
    * a run of numbers separated only by spaces, punctuation, ``$``, "and" / "or" (``3 3 3``, ``$3 $3 $3``): all
      equal is ``repeated answer``; different ones are returned as a list ``"1, 2, 3"``, which only a list
      reference equals.
    """
    tail = text[-_TAIL_CHARS:]
    tail = _CLOSING_RE.sub("", tail)  # the closing run (possibly empty) that ends the text
    unit = _UNIT_RE.search(tail)
    if unit is not None and unit.start() > 0 and tail[unit.start() - 1].isdigit():
        tail = tail[: unit.start()]
    numbers = list(_ALONE_NUMBER_RE.finditer(tail))
    if not numbers or numbers[-1].end() != len(tail):
        return Final(None)
    run = [numbers[-1]]
    for previous in reversed(numbers[:-1]):
        if _RUN_GAP_RE.fullmatch(tail, previous.end(), run[-1].start()) is None:
            break
        run.append(previous)
    run.reverse()
    sentence_start = max((m.end() for m in _LAST_SENTENCE_RE.finditer(tail, 0, run[0].start())), default=0)
    if _ALTERNATIVES_RE.search(tail, sentence_start, run[-1].end()) is not None:
        return Final(None, "several candidate answers")
    if _NEGATED_RE.search(tail, max(sentence_start, run[0].start() - 20), run[0].start()) is not None:
        return Final(None)  # "6, not 5": the final number is the one ruled out
    values = [m.group().replace(",", "") for m in run]
    if len(values) > 1 and len(set(values)) == 1:
        return Final(None, f"repeated answer: {values[0]} ({len(values)} times)")
    return Final(", ".join(values))


def _is_prose(text: str) -> bool:
    """Whether ``text`` holds words (two or more letters, not a LaTeX command, outside ``\\text{}``)."""
    return _PROSE_RE.search(_TEXT_GROUP_RE.sub(" ", text)) is not None


def _clause_answer(clause: str) -> Final:
    """The final expression of an answer clause that is a sentence: its closing ``$...$`` or ``\\(...\\)`` (when it
    is the clause's only math), else :func:`final_number`; nothing when the clause offers alternatives ("or"). A
    contrast ("6, not 5", "rather than") ends the clause first."""
    if _ALTERNATIVES_RE.search(clause) is not None:
        return Final(None, "several candidate answers")
    contrast = _CONTRAST_RE.search(clause)
    if contrast is not None and contrast.start() > 0:  # "6, not 5": what comes before the contrast
        clause = clause[: contrast.start()]
        if not _is_prose(clause) and clause.strip(_MARKUP):
            return Final(clause.strip(_MARKUP))
    found = _FINAL_MATH_RE.search(clause)
    if found is not None and clause.count("$") <= 2 and clause.count("\\(") <= 1:
        inner = (found.group(1) or found.group(2)).strip()
        if inner:
            return Final(inner)
    return final_number(clause)


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
    2. the clause after the last "The answer is" / "Answer:" / a line's leading ``####`` (to the end of its line
       or sentence); when that clause is a sentence ("Answer: the smallest such k is 12") and does not equal the
       reference as it stands, its final expression is judged instead (see :func:`final_number`);
    3. with ``fallback = "final_number"`` (default), the number that ends the completion, under the rules of
       :func:`final_number` (a repeated number, alternatives or a list of numbers are not a single answer); with
       ``fallback = "last_number"``, the last number anywhere in the text (lenient, and open to reward hacking:
       a model that ends every output with a guess, or sprays numbers, is sometimes right).

    Equivalence with the reference is decided by the ``math-verify`` library (``parse`` then ``verify``; the
    verifier used by TRL, NeMo-RL, ROLL, AReaL, LUFFY and HPT) with its own wall-clock timeouts off: the reward
    pool's per-sample limit is the only limit, so a verdict depends on the completion, the reference and the Config
    alone, never on how busy the machine is. A cheap pre-check runs first: identical strings (ignoring whitespace
    and ``$``) are correct and two different plain integers are wrong without calling it. Parsed answers are
    cached per process (references repeat across a group's rollouts).

    Answers that would make sympy run long are refused before parsing with reason ``answer too costly: ...``
    (references likewise, ``reference too costly: ...``), in microseconds: longer than ``max_answer_chars``, a digit
    run over ``max_answer_chars // 2`` digits, a power tower with a numeric base (``9^{9^{9}}``), an exponent above
    ``max_exponent``, brackets (``{ ( [``) nested deeper than ``max_depth``, a factorial or binomial of a number above
    ``max_factorial`` (or of a group holding a power), a bracketed sum of terms raised to a power whose expansion
    has more than ``max_power_terms`` terms, and an integral, sum, product, limit, ``\Gamma``, ``\zeta``, ``\psi``
    or ``\operatorname`` that the reference does not contain. These never make a legitimate answer to a plain
    reference; an answer identical to the reference is correct before the screen.

    Reasons: ``correct``, ``wrong: got '12' expected '13'``, ``no answer found``, ``unclosed \boxed``,
    ``repeated answer: 3 (5 times)``, ``several candidate answers``, ``answer too costly: ...``,
    ``reference too costly: ...``, ``no reference answer``.
    """

    role = "correctness"

    @attrs.frozen(kw_only=True)
    class Config:
        """Parameters of :class:`Math`.

        Attributes:
            fallback: what is read when there is neither a boxed answer nor an answer phrase: ``final_number``
                (default) the number that ends the completion, when it is a single answer; ``last_number`` the last
                number anywhere (lenient, as many GSM8K graders; rewards degenerate output such as ``$3 $3 $3``);
                ``none`` nothing (``no answer found``).
            max_answer_chars: longest extracted answer that is judged (longer ones are ``answer too costly``).
            max_exponent: largest literal exponent judged; ``10^{100000000}`` would make sympy build a 10^8-digit
                integer.
            max_depth: deepest nesting of braces, parentheses and brackets judged (latex2sympy slows down sharply
                with depth).
            max_factorial: largest number whose factorial or binomial coefficient is judged (``1000!`` costs
                sympy 0.04 s, ``1000000!`` minutes).
            max_power_terms: most terms the expansion of a bracketed sum's power may have (``(x+y+z)^{n}`` has
                ``binom(n + 2, 2)``); ``(a+b+c+d)^{20}`` (1771 terms) takes sympy seconds.
        """

        fallback: Literal["final_number", "last_number", "none"] = attrs.field(
            default="final_number", validator=attrs.validators.in_(("final_number", "last_number", "none"))
        )
        max_answer_chars: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
        max_exponent: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))
        max_depth: int = attrs.field(default=32, validator=attrs.validators.ge(1))
        max_factorial: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
        max_power_terms: int = attrs.field(default=100, validator=attrs.validators.ge(1))

    config: Config

    def extract(self, completion: str) -> str | None:
        r"""The final answer of ``completion`` by rules 1-3 as written (an answer clause whole, before any
        fallback to its final expression); None when there is none.

        An unclosed last ``\boxed{`` gives None as well (:meth:`score_one` reports it separately).
        """
        return self._extract(completion)[0]

    def _extract(self, completion: str) -> tuple[str | None, str | None, str]:
        """``(answer, clause, why)``: the answer, the raw answer clause when rule 2 gave it, and why there is none."""
        if _BOXED_RE.search(completion) is not None:
            boxed = last_boxed(completion, max_chars=len(completion))
            return boxed, None, "no answer found" if boxed is not None else "unclosed \\boxed"
        clause = _answer_clause(completion, max_chars=self.config.max_answer_chars)
        found = answer_is(completion, max_chars=self.config.max_answer_chars)
        if found is not None:
            return found, clause, ""
        if self.config.fallback == "last_number":
            return last_number(completion), None, "no answer found"
        if self.config.fallback == "final_number":
            final = final_number(completion)
            return final.answer, None, final.why
        return None, None, "no answer found"

    def _too_costly(self, answer: str, other: str, other_name: str = "reference") -> str | None:
        """Why ``answer`` is too costly to parse (``other`` is the opposite side, called ``other_name``), or None."""
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
        for m in _BRACKET_RE.finditer(answer):
            depth += {"{": 1, "(": 1, "[": 1, "}": -1, ")": -1, "]": -1}.get(m.group(), 0)
            deepest = max(deepest, depth)
        if deepest > cfg.max_depth:
            return f"brackets nested {deepest} deep"
        for m in _OPERATOR_RE.finditer(answer):
            if f"\\{m.group(1)}" not in other:
                return f"\\{m.group(1)}, which the {other_name} does not contain"
        for m in _FACTORIAL_RE.finditer(answer):
            if _big(_operand_before(answer, m.start()), cfg.max_factorial):
                return f"a factorial above {cfg.max_factorial}!"
        for m in _BINOM_RE.finditer(answer):
            operands = _brace_groups(answer, m.end(), 2) if m.group().endswith("{") else [answer]
            if any(_big(operand, cfg.max_factorial) for operand in operands):
                return f"a binomial coefficient above {cfg.max_factorial}"
        for m in _GROUP_POWER_RE.finditer(answer):
            terms = _expansion_terms(_operand_before(answer, m.start() + 1), int(m.group(1)))
            if terms > cfg.max_power_terms:
                return f"a power whose expansion has {terms} terms"
        return None

    def score_one(self, sample: RewardInput, /) -> Verdict:
        reference = _strip_delimiters(sample.reference)
        if not reference:
            return Verdict(score=0.0, reason="no reference answer")
        answer, clause, why = self._extract(sample.completion)
        answer = (answer or "").strip().strip("$").strip()
        if not answer:
            return Verdict(score=0.0, reason=why or "no answer found")
        verdict = self._judge(reference, answer)
        if verdict.score == 0.0 and clause is not None and _is_prose(clause):
            final = _clause_answer(clause)
            if final.answer is not None and final.answer != answer:
                return self._judge(reference, final.answer)
        return verdict

    def _judge(self, reference: str, answer: str) -> Verdict:
        if _compact(reference) == _compact(answer):
            return Verdict(score=1.0, reason="correct")
        costly = self._too_costly(answer, reference)
        if costly is not None:
            return Verdict(score=0.0, reason=f"answer too costly: {costly}")
        costly = self._too_costly(reference, answer, "answer")
        if costly is not None:
            return Verdict(score=0.0, reason=f"reference too costly: {costly}")
        if _equivalent(reference, answer):
            return Verdict(score=1.0, reason="correct")
        return Verdict(score=0.0, reason=f"wrong: got {_short(answer)} expected {_short(reference)}")


def _operand_before(text: str, end: int) -> str:
    """What a postfix ``!`` or ``^`` at ``end`` applies to: the bracketed group or the word just before it."""
    i = len(text[:end].rstrip())
    if i > 0 and text[i - 1] in ")]}":
        closing = text[i - 1]
        opening = {")": "(", "]": "[", "}": "{"}[closing]
        depth = 0
        for j in range(i - 1, -1, -1):
            depth += (text[j] == closing) - (text[j] == opening)
            if depth == 0:
                return text[j:i]
        return text[:i]
    j = i
    while j > 0 and (text[j - 1].isalnum() or text[j - 1] == "."):
        j -= 1
    return text[j:i]


def _brace_groups(text: str, start: int, count: int) -> list[str]:
    """The contents of up to ``count`` consecutive ``{...}`` groups from ``start`` (the first brace opened)."""
    groups, depth, begin = [], 1, start
    for m in _BRACE_RE.finditer(text, start):
        token = m.group()
        if token == "{":
            if depth == 0:
                begin = m.end()
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                groups.append(text[begin : m.start()])
                if len(groups) == count:
                    break
    return groups


def _big(operand: str, limit: int) -> bool:
    """Whether ``operand`` may be a number above ``limit``: it holds one, a product of numbers above it, a power,
    or a factorial."""
    if "^" in operand or _FACTORIAL_RE.search(operand) is not None:
        return True
    numbers = [int(run) if len(run) <= 12 else limit + 1 for run in _DIGIT_RUN_RE.findall(operand)]
    return math.prod(numbers or [0]) > limit


def _expansion_terms(group: str, exponent: int) -> int:
    """Terms in the expansion of ``group ** exponent`` when ``group`` is a bracketed sum holding a letter, else 1."""
    inner = group[1:-1] if group[:1] in "([{" else group
    if re.search(r"[A-Za-z]", inner) is None:
        return 1
    depth, terms = 0, 1
    for k, ch in enumerate(inner):
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0 and ch in "+-" and k > 0 and inner[:k].strip():
            terms += 1
    if terms < 2:
        return 1
    return math.comb(exponent + terms - 1, terms - 1) if exponent < 10_000 else exponent


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _plain_integer(text: str) -> int | None:
    compact = _compact(text)
    if _INTEGER_RE.fullmatch(compact) is None:
        return None
    return int(compact.replace(",", ""))


@functools.lru_cache(maxsize=4096)
def _equivalent(reference: str, answer: str) -> bool:
    """Whether ``answer`` equals ``reference``: integer pre-check, then math-verify with its timeouts off (cached
    per process; nothing here depends on time, so nothing cached can be the trace of a timeout)."""
    ref_int, ans_int = _plain_integer(reference), _plain_integer(answer)
    if ref_int is not None and ans_int is not None:
        return ref_int == ans_int
    from math_verify import verify

    gold = _parse(f"${reference}$")
    pred = _parse(f"\\boxed{{{answer}}}")
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> list:
    from math_verify import parse

    return parse(text, parsing_timeout=None)


class _QuietNoTimeout(logging.Filter):
    """Drops math-verify's one-time warning that its own timeout is off (the reward pool bounds the time)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_QuietNoTimeout())
