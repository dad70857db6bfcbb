"""Fuzz every registered reward verifier (plugins included) through the pool with Hypothesis text."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmix_core import registries
from lmix_core.rewards.pool import RewardPool
from lmix_core.types import RewardInput

NAMES = registries.rewards.names()

#: Fragments that steer random text into the verifiers' parsers.
FRAGMENTS = [
    "\\boxed{",
    "\\fbox{",
    "{",
    "}",
    "\\{",
    "\\}",
    "The answer is ",
    "Answer: ",
    "final answer:",
    "(B)",
    "**C**",
    "A.",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "\\frac{",
    "1/2",
    "^",
    "^{",
    "9",
    "99999999999",
    "=",
    "$",
    "\\(",
    "\\)",
    "+",
    "-",
    "*",
    "/",
    "÷",
    "×",
    "(",
    ")",
    "\x00",
    "\ud800",
    "\udfff",
    " ",
    "\n",
    ",",
    ".",
    "\\sqrt{",
    "\\text{",
    "\\left(",
    "\\right)",
    "e",
    "x",
    "\\infty",
    "\\pi",
    "%",
    "1,000",
    "0.5",
    "-0",
]
texts = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=())),  # any code point, lone surrogates included
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=40).map("".join),
)
metadata = st.fixed_dictionaries(
    {},
    optional={
        "target": st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats()),
        "numbers": st.one_of(st.lists(st.integers(-(10**6), 10**6), max_size=8), st.text(max_size=5)),
    },
)


@pytest.fixture(scope="module")
def pool():
    with RewardPool(workers=2, timeout_s=2.0) as p:
        yield p


def test_every_registered_reward_is_fuzzed():
    """The fuzz set is every registered reward name, the example plugin's countdown included."""
    assert {"math", "multiple_choice", "format", "exact_match", "overlong", "countdown"} <= set(NAMES)


@given(
    completions=st.lists(texts, min_size=1, max_size=4),
    reference=texts,
    meta=metadata,
    num_tokens=st.integers(0, 10**7),
)
def test_verifiers_never_crash_on_any_text(pool, completions, reference, meta, num_tokens):
    """Any text gives every verifier a finite score, a non-empty reason and no crash; [0, 1] unless shaping."""
    verifiers = [registries.rewards.get(name).default() for name in NAMES]
    samples = [
        RewardInput(prompt=c[:10], completion=c, reference=reference, metadata=meta, num_tokens=num_tokens)
        for c in completions
    ]
    verdicts = pool.score(verifiers, samples)
    for verifier, row in zip(verifiers, verdicts):
        for verdict in row:
            assert math.isfinite(verdict.score) and verdict.reason.strip(), (verifier, verdict)
            assert not verdict.reason.startswith("crashed"), (verifier, samples, verdict)
            if verifier.role != "shaping":
                assert 0.0 <= verdict.score <= 1.0, (verifier, verdict)
