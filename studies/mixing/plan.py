"""The study's plan: the comparisons in the order they run, and the checks that decide each claim.

A :class:`Check` is one paired difference the claim predicts (``better``: significantly above 0; ``not_worse``:
the interval's lower end above ``-margin``). A comparison's verdict (:func:`verdict`):

* the comparison has not run, or some of its runs have not finished → *not decided yet*;
* its regime's gate failed → *cannot be decided at this scale* (the precondition, not the methods, failed);
* every check passes → *holds*; some pass → *holds partly*;
* none passes and one is significant the other way → *does not reproduce*;
* none passes and none is significant → *cannot be decided at this scale*: the methods do not separate (every
  interval within the margin of zero) or the intervals are too wide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from lmix_core.compare.methods import COMPARISONS, Comparison

ORDER: tuple[str, ...] = ("format", "narrow_early", "narrow_final", "switch", "hard", "format_worked")
"""The comparisons, in the order the study runs them (the base setting's gate first)."""

NOT_WORSE_MARGIN = 0.02
METRIC_NAMES = {
    "task": "held-out pass@1",
    "format": "SFT-format share",
    "strict": "pass@1 in the SFT format",
    "any": "pass@k",
    "probe": "probe exact match",
}


@attrs.frozen(kw_only=True)
class Check:
    """``a − b`` on ``metric`` (a key of :data:`METRIC_NAMES`; deployment ``default`` unless ``a_deployment``).

    ``b = "best_static"`` stands for the static schedule (``switch_*``, ``constant_*``) with the highest mean.
    """

    a: str
    b: str
    metric: str
    kind: Literal["better", "not_worse"]
    a_deployment: str = "default"

    def text(self) -> str:
        word = "higher than" if self.kind == "better" else f"not lower (margin {NOT_WORSE_MARGIN}) than"
        return f"{self.a}'s {METRIC_NAMES[self.metric]} {word} {self.b}'s"


CHECKS: Mapping[str, tuple[Check, ...]] = {
    **{
        name: (
            Check(a="logit_average", b="kl_grpo", metric="task", kind="not_worse"),
            Check(a="logit_average", b="grpo", metric="format", kind="better"),
            Check(a="logit_average", b="kl_grpo", metric="format", kind="not_worse"),
        )
        for name in ("format", "format_worked")
    },
    **{
        f"narrow_{w}": (
            Check(a="parallel_average", b="sft", metric="probe", kind="better"),
            Check(a="parallel_average", b="grpo", metric="probe", kind="not_worse"),
            Check(a="sft_then_rl", b="grpo", metric="probe", kind="not_worse"),
            Check(a="parallel_average", b="grpo", metric="any", kind="better"),
            Check(a="parallel_average", b="sft_then_rl", metric="any", kind="better"),
        )
        for w in ("early", "final")
    },
    "switch": (
        Check(a="sasr", b="best_static", metric="strict", kind="better"),
        Check(a="sasr", b="sft", metric="strict", kind="better"),
        Check(a="sasr", b="grpo", metric="strict", kind="better"),
    ),
    "hard": (
        Check(a="prefix_rft", b="sft", metric="task", kind="better"),
        Check(a="prefix_rft", b="grpo", metric="task", kind="better"),
        Check(a="prefix_rft", b="luffy", metric="task", kind="better"),
        Check(a="luffy", b="grpo", metric="task", kind="better"),
    ),
}
"""The paired differences each claim predicts (see ``docs/study-design.md``)."""


def select(only: Sequence[str] | None) -> tuple[Comparison, ...]:
    """The comparisons named in ``only`` (all when None), in :data:`ORDER`; unknown names raise ValueError."""
    if only is None:
        return tuple(COMPARISONS[n] for n in ORDER)
    unknown = sorted(set(only) - set(ORDER))
    if not only or unknown:
        raise ValueError(f"'--only' must name comparisons among {list(ORDER)} (got {list(only)})")
    return tuple(COMPARISONS[n] for n in ORDER if n in only)


def verdict(gate: Mapping[str, Any] | None, outcomes: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """``(verdict, reason)`` from the gate and the checks' outcomes (``{"passed", "against", "text", "low",
    "high"}`` each; ``low``/``high``: the paired difference's 95% interval)."""
    if gate is None:
        return "not decided yet", "the comparison has not run"
    if not gate["passed"]:
        return "cannot be decided at this scale", f"the regime's precondition failed: {gate['reason']}"
    if any(o.get("missing") for o in outcomes):
        return "not decided yet", "some runs have not finished"
    passed = [o for o in outcomes if o["passed"]]
    if passed and len(passed) == len(outcomes):
        return "holds", "every predicted difference is significant in the predicted direction"
    if passed:
        return "holds partly", "; ".join(f"{o['text']}: {'yes' if o['passed'] else 'no'}" for o in outcomes)
    if any(o["against"] for o in outcomes):
        return "does not reproduce", "; ".join(
            o["text"] + (": significant the other way" if o["against"] else ": no") for o in outcomes
        )
    if all(-NOT_WORSE_MARGIN < o["low"] and o["high"] < NOT_WORSE_MARGIN for o in outcomes):
        return (
            "cannot be decided at this scale",
            f"the methods do not separate: every predicted difference's interval lies within ±{NOT_WORSE_MARGIN} "
            "of zero",
        )
    widest = max(o["high"] - o["low"] for o in outcomes)
    return (
        "cannot be decided at this scale",
        f"no predicted difference is significant either way (intervals too wide: the widest spans {widest:.3f})",
    )


__all__ = ["CHECKS", "NOT_WORSE_MARGIN", "ORDER", "Check", "select", "verdict"]
