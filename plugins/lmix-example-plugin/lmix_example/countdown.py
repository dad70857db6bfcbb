"""``countdown``: the Countdown arithmetic game as a verifiable reward."""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter, deque
from fractions import Fraction
from numbers import Integral
from typing import Literal, TypeGuard, final

import attrs

from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.types import RewardInput, Verdict

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED_RE = re.compile(r"\\boxed\s*\{([^{}]*)\}")
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_SYMBOLS = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-"})
#: Largest magnitude of a number in the puzzle; bigger metadata values are refused, not computed with.
_MAX_VALUE = 10**12


class _Invalid(Exception):
    """The expression is not a Countdown expression (the message says why)."""


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    """Value of an expression tree made of integer literals and + - * /; appends each literal to ``used``."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Div) and right == 0:
            raise _Invalid("division by zero")
        return _OPERATORS[type(node.op)](left, right)
    what = node.op if isinstance(node, ast.BinOp) else node
    raise _Invalid(f"{type(what).__name__} is not allowed")


@final
class Countdown(RewardVerifier):
    """The Countdown game: reach ``metadata["target"]`` from ``metadata["numbers"]`` with + − × ÷.

    The expression is read from the last ``<answer>…</answer>`` block, else the last ``\\boxed{…}``; an ``=`` and
    what follows it are dropped (``(4+2)*(3+1) = 24``), and ``×``, ``÷``, ``−`` are accepted. It is parsed with
    :mod:`ast` and evaluated exactly with :class:`fractions.Fraction` over an allow-list of nodes (integer literals,
    the four operators, parentheses): nothing is ever ``eval``-ed, and powers, names and calls are refused.

    Scores (TinyZero's countdown reward):
        * 1.0: the value equals the target and each number is used at most once (``usage = "at_most_once"``) or
          exactly once (``usage = "exactly_once"``);
        * ``format_score``: an expression was found but it is invalid, uses numbers it may not, or misses;
        * 0.0: no expression found, or the sample's metadata is unusable.

    Example metadata: ``{"target": 24, "numbers": [1, 2, 3, 4]}``.
    """

    role = "correctness"

    @attrs.frozen(kw_only=True)
    class Config:
        """Parameters of :class:`Countdown`.

        Attributes:
            format_score: score of a well-placed answer that is wrong or breaks the rules (TinyZero uses 0.1).
            usage: ``at_most_once`` (each number may be used once or not at all) or ``exactly_once`` (every number
                once, as in TinyZero).
            max_expression_chars: longest expression judged.
        """

        format_score: float = attrs.field(
            default=0.1, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
        )
        usage: Literal["at_most_once", "exactly_once"] = attrs.field(
            default="at_most_once", validator=attrs.validators.in_(("at_most_once", "exactly_once"))
        )
        max_expression_chars: int = attrs.field(default=200, validator=attrs.validators.ge(1))

    config: Config

    def expression(self, completion: str) -> str | None:
        """The final expression of ``completion`` (see the class docstring), or None."""
        found = _last(_ANSWER_RE, completion) or _last(_BOXED_RE, completion)
        if found is None:
            return None
        text = found.group(1).split("=", 1)[0].translate(_SYMBOLS).strip().strip("$").strip()
        return text or None

    def score_one(self, sample: RewardInput, /) -> Verdict:
        target, numbers = sample.metadata.get("target"), sample.metadata.get("numbers")
        if (
            not _is_int(target)
            or not isinstance(numbers, list | tuple)
            or not all(_is_int(n) for n in numbers)
        ):
            return Verdict(
                score=0.0, reason="metadata needs an integer 'target' and a list of integer 'numbers'"
            )
        if abs(int(target)) > _MAX_VALUE or any(abs(int(n)) > _MAX_VALUE for n in numbers):
            return Verdict(score=0.0, reason=f"metadata numbers above {_MAX_VALUE} are not supported")
        text = self.expression(sample.completion)
        if text is None:
            return Verdict(score=0.0, reason="no expression found")
        partial = self.config.format_score
        if len(text) > self.config.max_expression_chars:
            return Verdict(
                score=partial, reason=f"invalid expression: longer than {self.config.max_expression_chars}"
            )
        used: list[int] = []
        try:
            value = _evaluate(ast.parse(text, mode="eval"), used)
        except SyntaxError as exc:
            return Verdict(score=partial, reason=f"invalid expression: {exc.msg}")
        except (ValueError, _Invalid, RecursionError, MemoryError) as exc:
            return Verdict(score=partial, reason=f"invalid expression: {str(exc)[:80] or type(exc).__name__}")
        available, wanted = Counter(int(n) for n in numbers), Counter(used)
        for n, count in sorted(wanted.items()):
            if available[n] == 0:
                return Verdict(score=partial, reason=f"uses {n}, which is not among the numbers")
            if count > available[n]:
                return Verdict(score=partial, reason=f"uses {n} more often than given")
        if self.config.usage == "exactly_once" and wanted != available:
            return Verdict(score=partial, reason="does not use every number")
        if value != int(target):
            return Verdict(
                score=partial, reason=f"wrong: the expression equals {_show(value)}, target {int(target)}"
            )
        return Verdict(score=1.0, reason="correct")


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = deque(pattern.finditer(text), maxlen=1)
    return matches[0] if matches else None


def _is_int(value: object) -> TypeGuard[Integral]:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _show(value: Fraction) -> str:
    text = str(value)
    return text if len(text) <= 30 else text[:27] + "..."
