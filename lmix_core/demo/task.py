"""The demo's synthetic verifiable task (multi-step arithmetic), a general-capability probe, and a pretraining corpus.

**Arithmetic.** A problem is a flat expression over non-negative integers with ``+``, ``-`` and ``*`` and the usual
precedence (``*`` first, then left to right). Its worked solution evaluates one operation per line and ends with the
answer in ``\\boxed{}``, which the ``math`` reward verifies and the ``format`` reward can check::

    prompt:   Compute 23+45*3-17.
    solution: 45*3=135
              23+135=158
              158-17=141
              \\boxed{141}
    answer:   141

Two longer styles: ``columns`` does column arithmetic digit by digit, units first, with explicit carries and
borrows (``58+67: 8+7=15, 5+6+1=12, 125``); ``place_value`` breaks each operation down by the place values of one
operand::

    45*23=45*20+45*3=900+135=1035        58+67=58+60+7=118+7=125        158-17=158-10-7=148-7=141

Difficulty levels (:data:`LEVELS`) grow in the number of operations and the size of the operands; every partial
result stays in ``[0, max_value]`` (rejection sampling), so no step is negative.

**Held-out problems.** A problem's split is a pure function of its prompt text: the first 8 hex digits of the
SHA-256 of the prompt, modulo 1000, below ``1000 * HELD_OUT_FRACTION`` means ``test``. Train and test sets are
therefore disjoint whatever the seeds, counts and levels of the calls that drew them. Within one call problems are
distinct. (A train problem's intermediate line, e.g. ``45*3=135``, may equal a held-out one-step problem's whole
solution: sub-results are shared by any compositional task; whole held-out problems never appear in training.)

**Probe.** A different synthetic distribution (string manipulation: reverse, sort, count a letter) that neither SFT
nor RL trains on; it measures general capability and its loss under fine-tuning (forgetting), by exact match or by
the NLL of the answer. Its rows have the same columns, so the same data loader reads them.

**Corpus.** Plain-text documents for pretraining from scratch: worked solutions, lists of arithmetic facts, and probe
demonstrations, all drawn from the ``train`` split only.

All functions are deterministic under ``seed`` (Python's :class:`random.Random`, whose integer draws are stable
across versions).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from lmix_core.errors import ConfigError

Split = Literal["train", "test"]
Style = Literal["short", "columns", "place_value"]
ProbeKind = Literal["reverse", "sort", "count"]
CorpusKind = Literal["solutions", "facts", "probe"]

HELD_OUT_FRACTION = 0.1
"""Share of all possible problems reserved for the ``test`` split (fixed: changing it would break disjointness)."""

PROBE_KINDS: tuple[ProbeKind, ...] = ("reverse", "sort", "count")
DEFAULT_CORPUS_MIX: Mapping[str, float] = {"solutions": 0.5, "facts": 0.2, "probe": 0.3}
_MAX_ATTEMPTS_PER_ROW = 1000


@attrs.frozen(kw_only=True)
class Level:
    """One difficulty level of the arithmetic task.

    Attributes:
        n_ops: operations per expression (``n_ops + 1`` operands).
        digits: most digits of an operand of ``+``/``-`` and of the left factor of a product.
        mul_digits: most digits of a factor right of ``*``; 0 means no multiplication at this level.
        max_value: upper bound on every operand, partial result and the answer.
    """

    n_ops: int = attrs.field(validator=attrs.validators.ge(1))
    digits: int = attrs.field(validator=attrs.validators.ge(1))
    mul_digits: int = attrs.field(validator=attrs.validators.ge(0))
    max_value: int = attrs.field(validator=attrs.validators.gt(0))


LEVELS: Mapping[int, Level] = {
    1: Level(n_ops=1, digits=2, mul_digits=0, max_value=999),
    2: Level(n_ops=1, digits=2, mul_digits=1, max_value=999),
    3: Level(n_ops=2, digits=2, mul_digits=1, max_value=9_999),
    4: Level(n_ops=2, digits=3, mul_digits=1, max_value=9_999),
    5: Level(n_ops=3, digits=3, mul_digits=2, max_value=99_999),
    6: Level(n_ops=4, digits=3, mul_digits=2, max_value=99_999),
    7: Level(n_ops=5, digits=3, mul_digits=2, max_value=999_999),
    8: Level(n_ops=6, digits=4, mul_digits=2, max_value=999_999),
}
"""Difficulty levels 1..8, each at least as hard as the previous one in every field and harder in one.

The demo uses 1-3; the study's harder family uses 4-8.
"""


def split_of(key: str) -> Split:
    """The split a problem belongs to, from its canonical text alone (``test`` for about 10% of keys)."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 1000
    return "test" if bucket < 1000 * HELD_OUT_FRACTION else "train"


def _number(rng: random.Random, max_digits: int, *, low: int = 0) -> int:
    """An integer whose digit count is uniform in ``1..max_digits``, then uniform among such numbers (>= low)."""
    n_digits = rng.randint(1, max_digits)
    lo = 0 if n_digits == 1 else 10 ** (n_digits - 1)
    return rng.randint(max(lo, low), 10**n_digits - 1)


def _place_parts(n: int) -> list[int]:
    """Non-zero place-value parts of ``n``, largest first: 1035 → [1000, 30, 5] (0 → [0])."""
    digits = str(n)
    parts = [int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"]
    return parts or [0]


def _short_step(a: int, op: str, b: int, result: int) -> str:
    """``45*3=135``."""
    return f"{a}{op}{b}={result}"


def _place_value_step(a: int, op: str, b: int, result: int) -> str:
    """``45*23=45*20+45*3=900+135=1035``, ``58+67=58+60+7=118+7=125``, ``158-17=158-10-7=148-7=141``."""
    head = f"{a}{op}{b}"
    if op == "*":
        right, left = _place_parts(b), _place_parts(a)
        if len(right) > 1:
            products, terms = [a * p for p in right], "+".join(f"{a}*{p}" for p in right)
        elif len(left) > 1:
            products, terms = [p * b for p in left], "+".join(f"{p}*{b}" for p in left)
        else:
            return f"{head}={result}"
        return f"{head}={terms}={'+'.join(str(p) for p in products)}={result}"
    parts = _place_parts(b)
    if len(parts) == 1:
        return f"{head}={result}"
    chain = [f"{a}{op}{op.join(str(p) for p in parts)}"]
    acc = a
    for i, p in enumerate(parts[:-1]):
        acc = acc + p if op == "+" else acc - p
        chain.append(f"{acc}{op}{op.join(str(q) for q in parts[i + 1 :])}")
    return f"{head}={'='.join(chain)}={result}"


def _digits(n: int, width: int) -> list[int]:
    """Digits of ``n``, units first, zero-padded to ``width``: (58, 3) → [8, 5, 0]."""
    return [n // 10**i % 10 for i in range(width)]


def _assemble(column_results: Sequence[int]) -> int:
    """The number whose last column gives its leading digits and earlier columns their units digit."""
    value = column_results[-1]
    for r in reversed(column_results[:-1]):
        value = value * 10 + r % 10
    return value


def _column_add(a: int, b: int) -> str:
    """``58+67: 8+7=15, 5+6+1=12, 125``: units first, an explicit ``+1`` for the carry."""
    width = max(len(str(a)), len(str(b)))
    columns, sums, carry = [], [], 0
    for x, y in zip(_digits(a, width), _digits(b, width)):
        total = x + y + carry
        columns.append(f"{x}+{y}+1={total}" if carry else f"{x}+{y}={total}")
        sums.append(total)
        carry = total // 10
    return f"{a}+{b}: {', '.join(columns)}, {_assemble(sums)}"


def _column_sub(a: int, b: int) -> str:
    """``52-27: 12-7=5, 5-1-2=2, 25``: units first; a borrow shows as ``1x`` on top and ``-1`` in the next column."""
    width = len(str(a))
    columns, digits, borrow = [], [], 0
    for x, y in zip(_digits(a, width), _digits(b, width)):
        top = x + 10 if x - borrow < y else x
        diff = top - borrow - y
        columns.append(f"{top}-1-{y}={diff}" if borrow else f"{top}-{y}={diff}")
        digits.append(diff)
        borrow = int(top > x)
    return f"{a}-{b}: {', '.join(columns)}, {_assemble(digits)}"


def _column_mul_digit(a: int, d: int) -> str:
    """``47*8: 7*8=56, 4*8+5=37, 376``: units first, adding the carry (the tens of the previous column)."""
    columns, products, carry = [], [], 0
    for x in _digits(a, len(str(a))):
        product = x * d + carry
        columns.append(f"{x}*{d}+{carry}={product}" if carry else f"{x}*{d}={product}")
        products.append(product)
        carry = product // 10
    return f"{a}*{d}: {', '.join(columns)}, {_assemble(products)}"


def _column_mul(a: int, b: int) -> str:
    """A one-digit factor is one line; a longer one sums the shifted partial products, one addition per digit.

    ``47*23`` → ``47*3: 7*3=21, 4*3+2=14, 141`` / ``47*2: 7*2=14, 4*2+1=9, 94`` /
    ``141+940: 1+0=1, 4+4=8, 1+9=10, 1081``. Zero digits are skipped: ``47*20`` is the one line ``47*2: ..., 94``
    and the product, 940, appears in the next operation.
    """
    lines, total = [], 0
    for place, d in enumerate(_digits(b, len(str(b)))):
        if d == 0:
            continue  # a zero digit adds nothing; the next partial product is shifted by its place
        lines.append(_column_mul_digit(a, d))
        if total:
            lines.append(_column_add(total, a * d * 10**place))
        total += a * d * 10**place
    return "\n".join(lines)


_COLUMN_OPS: Mapping[str, Callable[[int, int], str]] = {"+": _column_add, "-": _column_sub, "*": _column_mul}


def _columns_step(a: int, op: str, b: int, result: int) -> str:
    """Column arithmetic, digit by digit, units first (one line per operation, more for a multi-digit factor)."""
    return _COLUMN_OPS[op](a, b)


_STEPS: Mapping[str, Callable[[int, str, int, int], str]] = {
    "short": _short_step,
    "place_value": _place_value_step,
    "columns": _columns_step,
}


def _evaluate(
    operands: Sequence[int], ops: Sequence[str], level: Level, style: Style
) -> tuple[int, list[str]] | None:
    """Evaluate with precedence, returning ``(value, solution lines)`` or ``None`` if a value leaves the range."""
    values, pending = [operands[0]], []
    lines: list[str] = []
    for op, b in zip(ops, operands[1:]):
        if op == "*":
            a = values[-1]
            values[-1] = a * b
            if values[-1] > level.max_value:
                return None
            lines.append(_STEPS[style](a, "*", b, values[-1]))
        else:
            pending.append(op)
            values.append(b)
    acc = values[0]
    for op, b in zip(pending, values[1:]):
        result = acc + b if op == "+" else acc - b
        if not 0 <= result <= level.max_value:
            return None
        lines.append(_STEPS[style](acc, op, b, result))
        acc = result
    return acc, lines


def _draw_problem(rng: random.Random, level: Level, style: Style) -> tuple[str, int, list[str]] | None:
    """One candidate ``(expression, value, solution lines)``; ``None`` when a partial result leaves the range."""
    symbols = ("+", "-", "*") if level.mul_digits else ("+", "-")
    ops = [rng.choice(symbols) for _ in range(level.n_ops)]
    operands = [_number(rng, level.digits, low=1)]
    for op in ops:
        operands.append(
            _number(rng, level.mul_digits, low=2) if op == "*" else _number(rng, level.digits, low=1)
        )
    if max(operands) > level.max_value:
        return None
    if any(op == "*" and min(a, b) < 2 for op, a, b in zip(ops, operands, operands[1:])):
        return None  # no trivial products such as 1*7
    evaluated = _evaluate(operands, ops, level, style)
    if evaluated is None:
        return None
    expression = str(operands[0]) + "".join(f"{op}{b}" for op, b in zip(ops, operands[1:]))
    return expression, evaluated[0], evaluated[1]


def _unit_draw(key: str) -> float:
    """A uniform draw in [0, 1) that depends on ``key`` alone."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def _check_levels(levels: Iterable[int]) -> tuple[int, ...]:
    levels = tuple(levels)
    unknown = [lv for lv in levels if lv not in LEVELS]
    if not levels or unknown:
        raise ConfigError(f"'levels' must be a non-empty subset of {sorted(LEVELS)} (got {levels!r})")
    return levels


def _check_style(style: str) -> None:
    if style not in _STEPS:
        raise ConfigError(f"'style' must be one of {sorted(_STEPS)} (got {style!r})")


def _distinct_rows(
    n: int,
    seed: int,
    split: Split,
    keys: Sequence[Any],
    draw: Callable[[random.Random, Any], dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """Draw ``n`` distinct rows of ``split``, cycling through ``keys`` (levels or kinds), then shuffle them."""
    if n < 0:
        raise ConfigError(f"'n' must be >= 0 (got {n})")
    rng = random.Random(f"{seed}|{split}|{','.join(map(str, keys))}")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(n):
        key = keys[i % len(keys)]
        for _ in range(_MAX_ATTEMPTS_PER_ROW):
            row = draw(rng, key)
            if row is not None and row["prompt"] not in seen and split_of(row["prompt"]) == split:
                seen.add(row["prompt"])
                rows.append(row)
                break
        else:
            raise ConfigError(
                f"cannot draw {n} distinct {split} problems for {key!r}: only {i // len(keys)} found per key; "
                "ask for fewer or use more varied levels/kinds"
            )
    rng.shuffle(rows)
    return rows


def generate(
    n: int,
    *,
    levels: Sequence[int] = (1, 2, 3),
    seed: int = 0,
    split: Split = "train",
    style: Style = "short",
    unworked_fraction: float = 0.0,
) -> list[dict[str, Any]]:
    """Draw ``n`` distinct arithmetic problems with worked solutions.

    Args:
        n: number of problems.
        levels: difficulty levels (keys of :data:`LEVELS`), used in turn, so each gets ``n / len(levels)``.
        seed: the random seed; same arguments give the same rows in the same order.
        split: ``train`` or ``test``; the two never share a problem (see the module docstring).
        style: ``short`` (one line per operation), ``columns`` (digit by digit) or ``place_value``.
        unworked_fraction: share of rows whose ``solution`` is the bare ``\\boxed{N}``, with no working: a
            demonstration set of mixed quality, as when some sources give only final answers. Which rows are
            unworked is a pure function of ``seed`` and the prompt.

    Returns:
        Rows ``{"prompt": "Compute 23+45*3.", "answer": "158", "solution": "45*3=135\\n23+135=158\\n\\boxed{158}",
        "level": 3}``, shuffled.

    Raises:
        ConfigError: unknown levels, negative ``n``, or more problems asked than the levels hold.
    """
    levels = _check_levels(levels)
    _check_style(style)
    if not 0.0 <= unworked_fraction <= 1.0:
        raise ConfigError(f"'unworked_fraction' must be in [0, 1] (got {unworked_fraction!r})")

    def draw(rng: random.Random, level_id: int) -> dict[str, Any] | None:
        problem = _draw_problem(rng, LEVELS[level_id], style)
        if problem is None:
            return None
        expression, value, lines = problem
        if _unit_draw(f"{seed}|unworked|{expression}") < unworked_fraction:
            lines = []
        solution = "\n".join([*lines, f"\\boxed{{{value}}}"])
        return {
            "prompt": f"Compute {expression}.",
            "answer": str(value),
            "solution": solution,
            "level": level_id,
        }

    return _distinct_rows(n, seed, split, levels, draw)


_PROBE_ALPHABET = string.ascii_lowercase
_COUNT_ALPHABET = "abcd"  # few letters, so counts vary (1..max_len) instead of being mostly 1


def _probe_reverse(word: str, rng: random.Random) -> tuple[str, str]:
    return f"Reverse: {word}", word[::-1]


def _probe_sort(word: str, rng: random.Random) -> tuple[str, str]:
    return f"Sort: {word}", "".join(sorted(word))


def _probe_count(word: str, rng: random.Random) -> tuple[str, str]:
    word = "".join(_COUNT_ALPHABET[_PROBE_ALPHABET.index(c) % len(_COUNT_ALPHABET)] for c in word)
    letter = rng.choice(word)
    return f"Count {letter} in: {word}", str(word.count(letter))


_PROBES: Mapping[str, Callable[[str, random.Random], tuple[str, str]]] = {
    "reverse": _probe_reverse,
    "sort": _probe_sort,
    "count": _probe_count,
}


def generate_probe(
    n: int,
    *,
    seed: int = 0,
    split: Split = "test",
    kinds: Sequence[ProbeKind] = PROBE_KINDS,
    min_len: int = 3,
    max_len: int = 8,
) -> list[dict[str, Any]]:
    """Draw ``n`` distinct general-capability probe items (string manipulation, never trained on by SFT/RL).

    Args:
        n: number of items.
        seed: the random seed.
        split: ``test`` for evaluation (default); ``train`` items appear only in the pretraining corpus.
        kinds: among ``reverse`` (``Reverse: abc`` → ``cba``), ``sort`` (``Sort: cab`` → ``abc``) and ``count``
            (``Count b in: abba`` → ``2``), used in turn.
        min_len: shortest word (lowercase letters).
        max_len: longest word.

    Returns:
        Rows ``{"prompt", "answer", "solution", "kind"}`` where ``solution == answer``: score by exact match of
        the generation, or by the NLL of ``solution`` given the prompt.

    Raises:
        ConfigError: unknown kinds or bad lengths.
    """
    kinds = tuple(kinds)
    if not kinds or any(k not in _PROBES for k in kinds):
        raise ConfigError(f"'kinds' must be a non-empty subset of {sorted(_PROBES)} (got {kinds!r})")
    if not 1 <= min_len <= max_len:
        raise ConfigError(
            f"'min_len' and 'max_len' must satisfy 1 <= min_len <= max_len (got {min_len}, {max_len})"
        )

    def draw(rng: random.Random, kind: str) -> dict[str, Any]:
        word = "".join(rng.choice(_PROBE_ALPHABET) for _ in range(rng.randint(min_len, max_len)))
        prompt, answer = _PROBES[kind](word, rng)
        return {"prompt": prompt, "answer": answer, "solution": answer, "kind": kind}

    return _distinct_rows(n, seed, split, kinds, draw)


def _facts_document(rng: random.Random, n_facts: int) -> str:
    """Lines of one-operation facts (``7*8=56``, ``23+45=68``) whose expressions are all in the train split."""
    lines: list[str] = []
    while len(lines) < n_facts:
        op = rng.choice("+-*")
        a = _number(rng, 1 if op == "*" else 2, low=1 if op != "*" else 2)
        b = _number(rng, 1 if op == "*" else 2, low=1 if op != "*" else 2)
        if op == "-" and b > a:
            a, b = b, a
        if split_of(f"Compute {a}{op}{b}.") == "train":
            value = {"+": a + b, "-": a - b, "*": a * b}[op]
            lines.append(f"{a}{op}{b}={value}")
    return "\n".join(lines)


def generate_corpus(
    n_documents: int,
    *,
    levels: Sequence[int] = (1, 2, 3),
    seed: int = 0,
    mix: Mapping[str, float] | None = None,
    style: Style = "short",
    items_per_document: int = 4,
) -> list[str]:
    """Plain-text pretraining documents drawn from the ``train`` split only.

    Args:
        n_documents: number of documents.
        levels: arithmetic levels of the worked solutions.
        seed: the random seed.
        mix: weight of each document kind: ``solutions`` (``Compute ...``, newline, the worked solution), ``facts``
            (lines ``a op b = c``) and ``probe`` (probe prompts, newline, answers). ``None`` means
            :data:`DEFAULT_CORPUS_MIX`. Pretraining-data composition is a lever "RL Excursions during Pre-Training" (arXiv 2606.04272)
            studies.
        style: solution style, as in :func:`generate`.
        items_per_document: problems, fact lines or probe items per document (separated by blank lines).

    Returns:
        The documents, in order; join them with ``<|eos|>`` (or the tokenizer's document separator) to pretrain.

    Raises:
        ConfigError: bad mix or levels.
    """
    if n_documents < 0 or items_per_document < 1:
        raise ConfigError(
            f"'n_documents' must be >= 0 and 'items_per_document' >= 1 (got {n_documents}, {items_per_document})"
        )
    mix = dict(DEFAULT_CORPUS_MIX if mix is None else mix)
    if not mix or any(k not in DEFAULT_CORPUS_MIX for k in mix) or any(w < 0 for w in mix.values()):
        raise ConfigError(
            f"'mix' must map some of {sorted(DEFAULT_CORPUS_MIX)} to weights >= 0 (got {mix!r})"
        )
    if sum(mix.values()) <= 0:
        raise ConfigError(f"'mix' must have a positive total weight (got {mix!r})")
    levels = _check_levels(levels)
    rng = random.Random(f"corpus|{seed}")
    kinds = rng.choices(list(mix), weights=list(mix.values()), k=n_documents)
    n_items = {k: kinds.count(k) * items_per_document for k in mix}
    solutions = iter(
        generate(n_items.get("solutions", 0), levels=levels, seed=seed, split="train", style=style)
    )
    probes = iter(generate_probe(n_items.get("probe", 0), seed=seed, split="train"))

    def worked(rows: Iterable[Mapping[str, Any]]) -> str:
        return "\n\n".join(f"{r['prompt']}\n{r['solution']}" for r in rows)

    makers: Mapping[str, Callable[[], str]] = {
        "solutions": lambda: worked(next(solutions) for _ in range(items_per_document)),
        "probe": lambda: worked(next(probes) for _ in range(items_per_document)),
        "facts": lambda: _facts_document(rng, items_per_document),
    }
    return [makers[kind]() for kind in kinds]


def write_jsonl(path: Path | str, rows: Iterable[Mapping[str, Any] | str]) -> Path:
    """Write rows as JSON lines (a bare string becomes ``{"text": ...}``); creates parent folders.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(
                json.dumps({"text": row} if isinstance(row, str) else dict(row), ensure_ascii=False) + "\n"
            )
    return path
