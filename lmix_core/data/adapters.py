"""Adapters from the usual datasets' native columns to :class:`~lmix_core.data.example.Example`.

Each adapter names the columns it needs (checked before any row is read, so a wrong file fails with the list of
columns it has) and converts one row, or skips it by returning ``None`` (the loader logs how many it skipped):

========================  ==========================================  ==============================================
adapter                   native columns                              Example
========================  ==========================================  ==============================================
``none``                  ``[data]`` ``prompt_column``,               the named columns as they are
                          ``answer_column``, ``demonstration_column``
``math``                  ``problem``, ``solution``                   answer = last ``\\boxed{}`` of the solution;
                          (+ ``level``, ``type`` into metadata)       demonstration = the solution
``gsm8k``                 ``question``, ``answer`` (``... #### 72``)  answer = text after ``####`` without commas;
                                                                      demonstration = the reasoning, calculator
                                                                      marks ``<<48/2=24>>`` removed, then a line
                                                                      ``\\boxed{72}``
``numina_cn_k12``         ``problem``, ``solution`` (+ ``source``)    as ``math``; rows whose ``source`` is present
                                                                      and not ``cn_k12`` are skipped
``mmlu``                  ``question``, ``choices`` (list),           prompt = question + lettered choices;
                          ``answer`` (0-based int or letter)          answer = letter; no demonstration;
                                                                      metadata ``choices`` (+ ``subject``)
========================  ==========================================  ==============================================

Rows of ``math``/``numina_cn_k12`` whose solution has no ``\\boxed{}`` are skipped (they have no checkable answer).

``[data] text_column`` (plain-text pretraining documents) bypasses these: :func:`adapter_for` then returns an adapter
that makes each non-empty text one Example with an empty prompt and the text as its demonstration.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from lmix_core.data.config import DataConfig
from lmix_core.data.example import Example


@attrs.frozen(kw_only=True)
class Adapter:
    """How one schema becomes Examples.

    Attributes:
        name: the ``[data] adapter`` value.
        required: columns every file must have.
        optional: columns read when present (copied into metadata or used as a filter).
        convert: ``(row, index) -> Example | None``; ``None`` skips the row.
        skip_reason: why ``convert`` may skip a row, for the loader's log line.
    """

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    convert: Callable[[Mapping[str, Any], int], Example | None]
    skip_reason: str = ""


_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, nested braces included.

    ``"so \\boxed{\\frac{1}{2}}."`` → ``"\\frac{1}{2}"``; ``"\\boxed 5"`` → ``"5"``; no box or an unclosed one →
    ``None``.
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start + len(next(c for c in _BOX_COMMANDS if text.startswith(c, start))) :]
    if rest.startswith(" "):  # "\boxed 5": the argument is the next word
        word = rest.split(maxsplit=1)
        return word[0].rstrip("$.,") if word else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i].strip()
    return None


def _text(value: Any) -> str:
    """A cell as text: numbers become their shortest form (``72``, not ``72.0``), ``None`` becomes ``""``."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _pick(row: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {name: row[name] for name in names if name in row and row[name] is not None}


def _columns_adapter(config: DataConfig) -> Adapter:
    demo = config.demonstration_column

    def convert(row: Mapping[str, Any], index: int) -> Example:
        return Example(
            index=index,
            prompt=_text(row[config.prompt_column]),
            answer=_text(row[config.answer_column]).strip(),
            demonstration=None if demo is None or row[demo] is None else _text(row[demo]),
        )

    required = (config.prompt_column, config.answer_column) + (() if demo is None else (demo,))
    return Adapter(name="none", required=required, convert=convert)


def _text_adapter(config: DataConfig) -> Adapter:
    """Plain-text documents (``text_column``): the whole text is the demonstration, the prompt is empty."""
    column = str(config.text_column)

    def convert(row: Mapping[str, Any], index: int) -> Example | None:
        text = _text(row[column])
        if not text:
            return None
        return Example(index=index, prompt="", answer="", demonstration=text)

    return Adapter(name="none", required=(column,), convert=convert, skip_reason="empty text")


def _boxed_solution(row: Mapping[str, Any], index: int, metadata: Sequence[str]) -> Example | None:
    answer = last_boxed(_text(row["solution"]))
    if answer is None:
        return None
    return Example(
        index=index,
        prompt=_text(row["problem"]),
        answer=answer,
        demonstration=_text(row["solution"]),
        metadata=_pick(row, metadata),
    )


def _math_adapter(config: DataConfig) -> Adapter:
    return Adapter(
        name="math",
        required=("problem", "solution"),
        optional=("level", "type"),
        convert=lambda row, index: _boxed_solution(row, index, ("level", "type")),
        skip_reason="solution without \\boxed{}",
    )


def _numina_adapter(config: DataConfig) -> Adapter:
    def convert(row: Mapping[str, Any], index: int) -> Example | None:
        if row.get("source") not in (None, "cn_k12"):
            return None
        return _boxed_solution(row, index, ("source",))

    return Adapter(
        name="numina_cn_k12",
        required=("problem", "solution"),
        optional=("source",),
        convert=convert,
        skip_reason="source other than cn_k12, or solution without \\boxed{}",
    )


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def _gsm8k_adapter(config: DataConfig) -> Adapter:
    def convert(row: Mapping[str, Any], index: int) -> Example | None:
        reasoning, sep, final = _text(row["answer"]).rpartition("####")
        if not sep:
            return None
        answer = final.strip().replace(",", "")
        demonstration = _CALCULATOR.sub("", reasoning).strip()
        return Example(
            index=index,
            prompt=_text(row["question"]),
            answer=answer,
            demonstration=f"{demonstration}\n\\boxed{{{answer}}}",
        )

    return Adapter(
        name="gsm8k", required=("question", "answer"), convert=convert, skip_reason="answer without ####"
    )


def _mmlu_adapter(config: DataConfig) -> Adapter:
    def convert(row: Mapping[str, Any], index: int) -> Example | None:
        choices = [_text(c) for c in row["choices"]]
        letters = string.ascii_uppercase[: len(choices)]
        raw = row["answer"]
        letter = (
            letters[raw] if isinstance(raw, int) and 0 <= raw < len(letters) else _text(raw).strip().upper()
        )
        if letter not in letters or not letter:
            return None
        lines = [_text(row["question"]), *(f"{ltr}. {c}" for ltr, c in zip(letters, choices))]
        return Example(
            index=index,
            prompt="\n".join(lines),
            answer=letter,
            metadata={"choices": choices, **_pick(row, ("subject",))},
        )

    return Adapter(
        name="mmlu",
        required=("question", "choices", "answer"),
        optional=("subject",),
        convert=convert,
        skip_reason="answer not a valid choice index or letter",
    )


ADAPTERS: Mapping[str, Callable[[DataConfig], Adapter]] = {
    "none": _columns_adapter,
    "math": _math_adapter,
    "gsm8k": _gsm8k_adapter,
    "numina_cn_k12": _numina_adapter,
    "mmlu": _mmlu_adapter,
}
"""Adapter factories by ``[data] adapter`` name (adapters are not registered components)."""


def adapter_for(config: DataConfig) -> Adapter:
    """The adapter that ``config.adapter`` names, built for ``config``'s column mapping.

    With ``config.text_column`` set, the plain-text adapter: each row's text is one document (Example with an
    empty prompt and the text as its demonstration); empty texts are skipped.
    """
    if config.text_column is not None:
        return _text_adapter(config)
    return ADAPTERS[config.adapter](config)
