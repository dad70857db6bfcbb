"""The regimes' preconditions, read from the runs that run first (:func:`lmix_core.compare.runner.run_comparison`).

A comparison whose gate fails is not run further and its verdict is "cannot be decided at this scale": a
ranking of RL variants where RL does not help, or of "keeps general capability" where nothing is lost, means
nothing (see :mod:`lmix_core.testbed.regimes`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmix_core.compare import stats
from lmix_core.compare.methods import Comparison
from lmix_core.compare.runner import Layout
from lmix_core.compare.sizes import Sizes
from lmix_core.testbed.regimes import HARD_PASS_AT_8, MIN_SPREAD, REGIMES

PAIRED: dict[str, tuple[str, str, int, str]] = {
    "grpo_improves": ("grpo", "task", +1, "GRPO minus the starting model, held-out pass@1"),
    "sft_degrades_probe": ("sft", "probe", -1, "SFT minus the starting model, probe exact match"),
}
"""Gates that compare one method with the starting model, paired: ``gate: (method, metric, the sign the difference
must have, what the difference is)``; the gate passes when the difference is significant with that sign."""


def check_gate(layout: Layout, sizes: Sizes, comparison: Comparison) -> dict[str, Any]:
    """``{"gate", "passed", "reason", ...figures}`` for the comparison's regime."""
    from lmix_core.compare.table import matrix, results

    gate = REGIMES[comparison.regime].gate
    start = results(layout, sizes, comparison, "start")
    if start is None:
        return {"gate": gate, "passed": False, "reason": "the starting model is not evaluated"}

    def runs(name: str) -> list[dict[str, Any]]:
        found = results(layout, sizes, comparison, name)
        if found is None:
            raise ValueError(f"gate {gate!r} needs every run of {name!r}")
        return found

    if gate in PAIRED:
        method, metric, sign, what = PAIRED[gate]
        d = stats.paired_difference(matrix(runs(method), metric), matrix(start, metric))
        return {
            "gate": gate,
            "passed": d.significant and sign * d.estimate.mean > 0,
            "reason": f"{what}: {d.render()}",
            "difference": d.estimate.mean,
            "p_value": d.p_value,
        }
    if gate == "static_spread":
        scores = {m: matrix(runs(m), comparison.metric) for m in comparison.gate_methods}
        means = {m: float(x.mean()) for m, x in scores.items()}
        best, worst = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
        d = stats.paired_difference(scores[best], scores[worst])
        why = (
            f"best static schedule ({best}) minus worst ({worst}), held-out {comparison.metric}: {d.render()} "
            f"(needs significance and at least {MIN_SPREAD})"
        )
        return {
            "gate": gate,
            "passed": d.significant and d.estimate.mean >= MIN_SPREAD,
            "reason": why,
            "difference": d.estimate.mean,
            "p_value": d.p_value,
        }
    if gate == "hard_start":
        p8 = float(np.mean([r["pass@8_train"] for r in start]))
        ok = p8 <= HARD_PASS_AT_8
        why = f"starting model's pass@8 on the hard training prompts: {p8:.3f} (bound {HARD_PASS_AT_8})"
        return {"gate": gate, "passed": ok, "reason": why, "pass@8": p8}
    raise ValueError(f"unknown gate {gate!r}")


__all__ = ["PAIRED", "check_gate"]
