"""A comparison's table from its run folders: each method's mean and 95% interval, paired differences against the
baseline, the SFT-format share, the probe, and the costs (rollouts, RL tokens, SFT steps, seconds)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lmix_core.compare import stats
from lmix_core.compare.methods import Comparison, Deployment, Method
from lmix_core.compare.runner import Layout, cells, read_json
from lmix_core.compare.sizes import Sizes


def results(layout: Layout, sizes: Sizes, comparison: Comparison, method: str) -> list[dict[str, Any]] | None:
    """The method's ``result.json`` of every cell (``start``: the starting model's), or None if one is missing."""
    out = []
    for d, t in cells(sizes):
        path = (
            layout.start_result(comparison.name, d, t)
            if method == "start"
            else layout.run_dir(comparison.name, method, d, t) / "result.json"
        )
        if not path.exists():
            return None
        out.append(read_json(path))
    return out


def matrix(runs: Sequence[Mapping[str, Any]], metric: str, deployment: str = "default") -> np.ndarray:
    """Per-problem scores of one metric (``task``: correct; ``format``: in the SFT format; ``strict``: both;
    ``any``: pass@k over the samples; ``probe``: exact match), one row per cell. Shape ``[C, P]``."""
    return np.array([r["evals"][deployment][metric] for r in runs], dtype=np.float64)


def rows(
    layout: Layout, sizes: Sizes, comparison: Comparison, methods: Mapping[str, Method]
) -> list[dict[str, Any]]:
    """One row per method and deployment (the starting model first), with estimates and paired differences.

    A method whose runs are not all finished has ``"missing": True`` and no numbers.
    """
    base = results(layout, sizes, comparison, comparison.baseline)
    out: list[dict[str, Any]] = []
    entries: list[tuple[str, str, Deployment]] = [("start", "start model", "default")]
    for name, method in methods.items():
        for dep in method.deployments:
            label = method.label if dep == "default" else f"{method.label}, policy alone"
            entries.append((name, label, dep))
    for name, label, dep in entries:
        runs = results(layout, sizes, comparison, name)
        row: dict[str, Any] = {
            "method": name,
            "label": label,
            "deployment": dep,
            "baseline": name == comparison.baseline and dep == "default",
        }
        if runs is None:
            out.append(row | {"missing": True})
            continue
        for metric in ("task", "format", "strict", "probe"):
            x = matrix(runs, metric, dep)
            row[metric] = stats.estimate(x)
            if base is not None and not row["baseline"]:
                row[f"d_{metric}"] = stats.paired_difference(x, matrix(base, metric))
        if name != "start":
            c = [r["costs"] for r in runs]
            for key in ("rollouts", "rl_tokens", "sft_steps", "optimizer_steps", "wall_s"):
                row[key] = float(np.mean([x[key] for x in c]))
            row["curve"] = [
                float(
                    np.mean(
                        [x["curve"][i] for x in c if i < len(x["curve"]) and x["curve"][i] is not None]
                        or [np.nan]
                    )
                )
                for i in range(max(len(x["curve"]) for x in c))
            ]
        out.append(row)
    return out


def render(table: Sequence[Mapping[str, Any]], *, baseline_label: str) -> str:
    """The table as markdown: mean [95% CI] and Δ vs the baseline [95% CI] (``*``: significant at 5%)."""
    head = (
        f"| method | held-out pass@1 | Δ vs {baseline_label} | SFT format | correct in SFT format | probe exact match | "
        "Δ probe | rollouts | RL tokens | SFT steps | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in table:
        if r.get("missing"):
            lines.append(f"| {r['label']} | not run | | | | | | | | | |")
            continue

        def d(key: str, r: Mapping[str, Any] = r) -> str:
            return r[key].render() if key in r else ("baseline" if r["baseline"] else "")

        cost = (
            f"{r['rollouts']:.0f} | {r['rl_tokens']:.0f} | {r['sft_steps']:.0f} | {r['wall_s']:.0f}"
            if "rollouts" in r
            else "- | - | - | -"
        )
        lines.append(
            f"| {r['label']} | {r['task'].render()} | {d('d_task')} | {r['format'].render()} | {r['strict'].render()} | "
            f"{r['probe'].render()} | {d('d_probe')} | {cost} |"
        )
    return "\n".join(lines)


__all__ = ["matrix", "render", "results", "rows"]
