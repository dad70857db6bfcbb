"""The study's verdict from a gate and its predicted differences: each of the five outcomes and its reason."""

from __future__ import annotations

from typing import Any

import pytest

from studies.mixing.plan import verdict

GATE = {"passed": True, "reason": "passed"}


def outcome(low: float, high: float) -> dict[str, Any]:
    """A predicted difference "A higher than B" decided the way the report decides it."""
    significant = low > 0 or high < 0
    mean = (low + high) / 2
    return {
        "text": "a higher than b",
        "passed": significant and mean > 0,
        "against": significant and mean < 0,
        "low": low,
        "high": high,
    }


@pytest.mark.parametrize(
    ("gate", "outcomes", "expected", "reason"),
    [
        (None, [], "not decided yet", "has not run"),
        (
            {"passed": False, "reason": "SFT minus start: +0.001"},
            [],
            "cannot be decided at this scale",
            "+0.001",
        ),
        (GATE, [{"text": "x", "missing": True}], "not decided yet", "not finished"),
        (GATE, [outcome(0.01, 0.2), outcome(0.05, 0.1)], "holds", "every predicted difference"),
        (GATE, [outcome(0.01, 0.2), outcome(-0.1, 0.1)], "holds partly", "a higher than b: no"),
        (GATE, [outcome(-0.2, -0.01), outcome(-0.1, 0.1)], "does not reproduce", "significant the other way"),
        (
            GATE,
            [outcome(-0.002, 0.001), outcome(-0.01, 0.015)],
            "cannot be decided at this scale",
            "do not separate",
        ),
        (
            GATE,
            [outcome(-0.002, 0.001), outcome(-0.1, 0.15)],
            "cannot be decided at this scale",
            "spans 0.250",
        ),
    ],
)
def test_verdict_and_its_reason(
    gate: dict[str, Any] | None, outcomes: list[dict[str, Any]], expected: str, reason: str
) -> None:
    got, why = verdict(gate, outcomes)
    assert got == expected and reason in why, (got, why)
