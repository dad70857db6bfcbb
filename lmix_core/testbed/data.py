"""The testbed's data: pretraining corpus, SFT demonstrations, RL prompts, held-out evaluation and probe, disjoint.

**Disjoint by construction.** Every problem has a canonical key, its prompt text (``Compute 23+45*3.``,
``Reverse: abc``). :func:`role_of` maps a key to exactly one role from the first 8 hex digits of its SHA-256,
modulo 1000 (:data:`ROLE_BUCKETS`)::

    pretrain [0, 600)   sft [600, 700)   rl [700, 850)   eval [850, 950)   probe [950, 1000)

A generator for one role draws candidates and keeps only those of that role, so two files of different roles can
never share a problem, whatever the seeds, sizes and levels that drew them. The arithmetic fact lines of the corpus
(``7*8=56``) are problems too (``Compute 7*8.``) and obey the same rule. :func:`overlaps` checks it on the written
files by parsing their text, and returns the figures (``docs/results.md`` shows them).

A worked solution's intermediate line (``45*3=135``) may equal a held-out one-step problem's whole solution:
sub-results are shared by any compositional task; whole held-out problems never appear in training.

**Two answer formats.** The corpus writes ``columns`` working (digit by digit) ending with ``Answer: N``; the SFT
demonstrations write ``short`` working (one line per operation, a worse method for a small model) ending with
``\\boxed{N}``, and half of them give only the bare ``\\boxed{N}`` (a mixed-quality demonstration set). The
correctness reward reads either format; the ``format`` verifier (weight 0) measures the SFT format alone.
RL from the SFT model can therefore gain accuracy by returning to the pretraining format and working, which is
exactly what an anchored method (logit averaging, a KL term) is claimed to resist. ``sft_worked.jsonl`` pairs the
``\\boxed{N}`` ending with the corpus's ``columns`` working instead (half of them bare as well): its SFT model keeps
much of the pretrained accuracy, and RL gains by writing the working more often, without having to rediscover it.

**Files** (:func:`write_testbed`), all JSON lines with ``prompt``, ``answer``, ``solution`` (and ``level`` or
``kind``):

* ``corpus.jsonl`` (``text``): worked solutions, fact lines and probe demonstrations, role ``pretrain``;
* ``sft.jsonl``: demonstrations at the easy levels, role ``sft``; ``sft_narrow.jsonl``: level 1 only;
  ``sft_worked.jsonl``: easy levels in ``columns`` working;
* ``rl.jsonl``: RL prompts at the easy levels (with demonstrations, which guided methods use), role ``rl``;
* ``rl_hard.jsonl``: RL prompts at the hard levels, with worked demonstrations, role ``rl``;
* ``eval.jsonl`` / ``eval_hard.jsonl``: held-out problems at the easy / hard levels, role ``eval``;
* ``probe.jsonl``: string-manipulation items (reverse, sort, count) never trained on after pretraining, role
  ``probe`` (the corpus holds other items of the same kinds).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import validators as v

from lmix_core.demo import task
from lmix_core.errors import ConfigError

Role = Literal["pretrain", "sft", "rl", "eval", "probe"]
ROLE_BUCKETS: Mapping[Role, tuple[int, int]] = {
    "pretrain": (0, 600),
    "sft": (600, 700),
    "rl": (700, 850),
    "eval": (850, 950),
    "probe": (950, 1000),
}
"""Each role's half-open range of the key's bucket in ``[0, 1000)``; the ranges tile it (fixed: changing them
changes every file)."""

EASY_LEVELS: tuple[int, ...] = (1, 2, 3)
HARD_LEVELS: tuple[int, ...] = (5, 6)
_MAX_ATTEMPTS = 2000


def role_of(key: str) -> Role:
    """The one role a problem may serve, from its canonical key (the prompt text) alone."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 1000
    for role, (lo, hi) in ROLE_BUCKETS.items():
        if lo <= bucket < hi:
            return role
    raise AssertionError(f"bucket {bucket} outside ROLE_BUCKETS")  # the ranges tile [0, 1000)


@attrs.frozen(kw_only=True)
class TestbedSizes:
    """How much of each file to draw.

    Attributes:
        corpus_documents: pretraining documents (one item, or ``facts_per_document`` fact lines, each).
        facts_per_document: arithmetic fact lines per fact document.
        sft: SFT demonstrations at the easy levels (``sft.jsonl``).
        sft_narrow: SFT demonstrations at level 1 only (level 1 holds about 1,400 problems of role ``sft``).
        sft_worked: SFT demonstrations in column working at the easy levels (``sft_worked.jsonl``; level 2 holds
            about 650 problems of role ``sft`` that column working can write).
        rl: RL prompts at the easy levels.
        rl_hard: RL prompts at the hard levels.
        eval: held-out problems at the easy levels.
        eval_hard: held-out problems at the hard levels.
        probe: held-out probe items.
    """

    __test__ = False  # not a pytest class

    corpus_documents: int = attrs.field(default=60_000, validator=v.ge(1))
    facts_per_document: int = attrs.field(default=6, validator=v.ge(1))
    sft: int = attrs.field(default=2000, validator=v.ge(1))
    sft_narrow: int = attrs.field(default=1000, validator=v.ge(1))
    sft_worked: int = attrs.field(default=1500, validator=v.ge(1))
    rl: int = attrs.field(default=3000, validator=v.ge(1))
    rl_hard: int = attrs.field(default=1000, validator=v.ge(1))
    eval: int = attrs.field(default=600, validator=v.ge(1))
    eval_hard: int = attrs.field(default=300, validator=v.ge(1))
    probe: int = attrs.field(default=300, validator=v.ge(1))


CORPUS_MIX: Mapping[str, float] = {"solutions": 0.55, "facts": 0.15, "probe": 0.30}
"""Weights of the corpus's document kinds."""


def _rows(
    n: int,
    seed: int,
    role: Role,
    name: str,
    keys: Sequence[Any],
    draw: Callable[[random.Random, Any], Any],
    *,
    distinct: bool = True,
) -> list[dict[str, Any]]:
    """``n`` rows of ``role`` (cycling through ``keys``: levels or probe kinds), shuffled; distinct unless
    ``distinct=False`` (drawn with replacement, as a corpus repeats what it holds)."""
    rng = random.Random(f"testbed|{seed}|{name}")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(n):
        key = keys[i % len(keys)]
        for _ in range(_MAX_ATTEMPTS):
            row = draw(rng, key)
            if (
                row is not None
                and (row["prompt"] not in seen or not distinct)
                and role_of(row["prompt"]) == role
            ):
                seen.add(row["prompt"])
                rows.append(row)
                break
        else:
            raise ConfigError(
                f"cannot draw {n} distinct {role} problems for {name!r} ({key!r}): only {i // len(keys)} "
                "found per key; ask for fewer"
            )
    rng.shuffle(rows)
    return rows


def _solution(lines: Sequence[str], value: int, answer_format: str) -> str:
    end = f"\\boxed{{{value}}}" if answer_format == "boxed" else f"Answer: {value}"
    return "\n".join([*lines, end])


def arithmetic(
    n: int,
    *,
    seed: int,
    role: Role,
    name: str,
    levels: Sequence[int],
    style: task.Style,
    answer_format: Literal["boxed", "answer"],
    unworked_fraction: float = 0.0,
    distinct: bool = True,
) -> list[dict[str, Any]]:
    """``n`` arithmetic problems of ``role`` with solutions in ``style`` ending in ``answer_format``, distinct
    unless ``distinct=False`` (the corpus: its one-operation levels hold fewer problems of role ``pretrain`` than
    the full corpus draws, about 12,000 each, so it repeats some, as real corpora do).

    ``unworked_fraction`` of them (a pure function of ``seed`` and the prompt) have the bare answer line only.
    ``name`` separates the random streams of files of one role (``sft`` and ``sft_narrow``).
    """

    def draw(rng: random.Random, level: int) -> dict[str, Any] | None:
        problem = task._draw_problem(rng, task.LEVELS[level], style)
        if problem is None:
            return None
        expression, value, lines = problem
        if task._unit_draw(f"{seed}|unworked|{expression}") < unworked_fraction:
            lines = []
        return {
            "prompt": f"Compute {expression}.",
            "answer": str(value),
            "solution": _solution(lines, value, answer_format),
            "level": level,
        }

    return _rows(n, seed, role, name, tuple(levels), draw, distinct=distinct)


def probe_items(n: int, *, seed: int, role: Role, name: str) -> list[dict[str, Any]]:
    """``n`` distinct string-manipulation items of ``role`` (kinds ``reverse``, ``sort``, ``count`` in turn)."""

    def draw(rng: random.Random, kind: str) -> dict[str, Any]:
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))
        prompt, answer = task._PROBES[kind](word, rng)
        return {"prompt": prompt, "answer": answer, "solution": answer, "kind": kind}

    return _rows(n, seed, role, name, task.PROBE_KINDS, draw)


def _facts(rng: random.Random, count: int) -> str:
    """``count`` one-operation fact lines (``7*8=56``) whose problems have role ``pretrain``."""
    lines: list[str] = []
    while len(lines) < count:
        op = rng.choice("+-*")
        a = task._number(rng, 1 if op == "*" else 2, low=2 if op == "*" else 1)
        b = task._number(rng, 1 if op == "*" else 2, low=2 if op == "*" else 1)
        if op == "-" and b > a:
            a, b = b, a
        if role_of(f"Compute {a}{op}{b}.") == "pretrain":
            lines.append(f"{a}{op}{b}={ {'+': a + b, '-': a - b, '*': a * b}[op] }")
    return "\n".join(lines)


def corpus(n_documents: int, *, seed: int, facts_per_document: int = 6) -> list[str]:
    """Pretraining documents (role ``pretrain`` only): column-worked solutions ending ``Answer: N`` at the easy
    levels, fact lines, and probe demonstrations (prompt, newline, answer), mixed by :data:`CORPUS_MIX`."""
    rng = random.Random(f"testbed|{seed}|corpus")
    kinds = rng.choices(list(CORPUS_MIX), weights=list(CORPUS_MIX.values()), k=n_documents)
    solutions = iter(
        arithmetic(
            kinds.count("solutions"),
            seed=seed,
            role="pretrain",
            name="corpus",
            levels=EASY_LEVELS,
            style="columns",
            answer_format="answer",
            distinct=False,
        )
    )
    probes = iter(probe_items(kinds.count("probe"), seed=seed, role="pretrain", name="corpus"))
    makers: Mapping[str, Callable[[], str]] = {
        "solutions": lambda: (lambda r: f"{r['prompt']}\n{r['solution']}")(next(solutions)),
        "probe": lambda: (lambda r: f"{r['prompt']}\n{r['solution']}")(next(probes)),
        "facts": lambda: _facts(rng, facts_per_document),
    }
    return [makers[kind]() for kind in kinds]


FILES: tuple[str, ...] = (
    "corpus",
    "sft",
    "sft_narrow",
    "sft_worked",
    "rl",
    "rl_hard",
    "eval",
    "eval_hard",
    "probe",
)
"""The testbed's files (``<name>.jsonl``), in the order :func:`write_testbed` writes them."""

FILE_ROLES: Mapping[str, Role] = {
    "corpus": "pretrain",
    "sft": "sft",
    "sft_narrow": "sft",
    "sft_worked": "sft",
    "rl": "rl",
    "rl_hard": "rl",
    "eval": "eval",
    "eval_hard": "eval",
    "probe": "probe",
}


def build_testbed(seed: int, sizes: TestbedSizes) -> dict[str, list[Any]]:
    """Every file's rows (corpus: strings) for data seed ``seed``."""

    def sft(name: str, levels: Sequence[int], n: int, style: task.Style = "short") -> list[dict[str, Any]]:
        return arithmetic(
            n,
            seed=seed,
            role="sft",
            name=name,
            levels=levels,
            style=style,
            answer_format="boxed",
            unworked_fraction=0.5,
        )

    def worked(n: int, role: Role, name: str, levels: Sequence[int]) -> list[dict[str, Any]]:
        return arithmetic(
            n, seed=seed, role=role, name=name, levels=levels, style="short", answer_format="boxed"
        )

    return {
        "corpus": corpus(sizes.corpus_documents, seed=seed, facts_per_document=sizes.facts_per_document),
        "sft": sft("sft", EASY_LEVELS, sizes.sft),
        "sft_narrow": sft("sft_narrow", (1,), sizes.sft_narrow),
        "sft_worked": sft("sft_worked", EASY_LEVELS, sizes.sft_worked, style="columns"),
        "rl": worked(sizes.rl, "rl", "rl", EASY_LEVELS),
        "rl_hard": worked(sizes.rl_hard, "rl", "rl_hard", HARD_LEVELS),
        "eval": worked(sizes.eval, "eval", "eval", EASY_LEVELS),
        "eval_hard": worked(sizes.eval_hard, "eval", "eval_hard", HARD_LEVELS),
        "probe": probe_items(sizes.probe, seed=seed, role="probe", name="probe"),
    }


def write_testbed(out: Path | str, *, seed: int, sizes: TestbedSizes) -> dict[str, Path]:
    """Write the testbed's files under ``out`` (``<name>.jsonl``) and return their paths by name."""
    out = Path(out)
    rows = build_testbed(seed, sizes)
    return {name: task.write_jsonl(out / f"{name}.jsonl", rows[name]) for name in FILES}


_PROBLEM_LINE = re.compile(r"^(Compute .+\.|Reverse: \w+|Sort: \w+|Count \w in: \w+)$")
_FACT_LINE = re.compile(r"^(\d+)([+\-*])(\d+)=\d+$")


def problem_keys(text: str) -> set[str]:
    """The canonical keys of every whole problem a text states: prompt lines, and fact lines as their problem.

    Intermediate lines of worked solutions (``45*3=135`` after a ``Compute`` line) count as facts too, so the check
    is stricter than the construction: a solution line that restates a held-out one-operation problem is reported.
    """
    keys: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if _PROBLEM_LINE.match(line):
            keys.add(line)
        elif (m := _FACT_LINE.match(line)) is not None:
            keys.add(f"Compute {m[1]}{m[2]}{m[3]}.")
    return keys


def file_keys(path: Path | str) -> set[str]:
    """The keys of a testbed file: each row's ``prompt``, or for ``text`` rows every problem the text states."""
    import json

    keys: set[str] = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        keys |= {row["prompt"]} if "prompt" in row else problem_keys(row["text"])
    return keys


def overlaps(paths: Mapping[str, Path | str]) -> dict[str, Any]:
    """Overlap figures between the files: ``{"sizes": {name: distinct keys}, "pairs": {"a|b": shared keys},
    "corpus_steps": ...}``.

    ``pairs`` counts, for every pair of files with different roles, the problems both state. The corpus's keys
    include the intermediate lines of its worked solutions, so ``corpus_steps`` separately counts corpus solution
    lines that equal a one-operation problem of another file (see the module docstring); whole problems are in
    ``pairs``.
    """
    keys = {name: file_keys(p) for name, p in paths.items()}
    corpus_prompts: set[str] = set()
    if "corpus" in paths:
        import json

        for line in Path(paths["corpus"]).read_text(encoding="utf-8").splitlines():
            text = json.loads(line)["text"]
            first = text.splitlines()[0]
            corpus_prompts |= {first} if _PROBLEM_LINE.match(first) else problem_keys(text)
    whole = {**keys, **({"corpus": corpus_prompts} if "corpus" in paths else {})}
    names = list(paths)
    pairs: dict[str, int] = {}
    steps: dict[str, int] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if FILE_ROLES.get(a) == FILE_ROLES.get(b):
                continue
            pairs[f"{a}|{b}"] = len(whole[a] & whole[b])
            if "corpus" in (a, b):
                other = b if a == "corpus" else a
                steps[other] = len((keys["corpus"] - corpus_prompts) & keys[other])
    return {"sizes": {n: len(k) for n, k in whole.items()}, "pairs": pairs, "corpus_steps": steps}


def by_role(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many rows' prompts fall in each role (a file of one role has one entry)."""
    counts: dict[str, int] = {}
    for row in rows:
        role = role_of(row["prompt"])
        counts[role] = counts.get(role, 0) + 1
    return counts


__all__ = [
    "CORPUS_MIX",
    "EASY_LEVELS",
    "FILES",
    "FILE_ROLES",
    "HARD_LEVELS",
    "ROLE_BUCKETS",
    "TestbedSizes",
    "arithmetic",
    "build_testbed",
    "by_role",
    "corpus",
    "file_keys",
    "overlaps",
    "probe_items",
    "problem_keys",
    "role_of",
    "write_testbed",
]
