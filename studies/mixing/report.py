"""The study's report, regenerated from the run folders alone: ``docs/results.md`` (or ``OUT/results.md``).

Per comparison: the claim, the regime that tests it and its gate, the table (mean and 95% interval, paired
differences against the baseline, costs), the values that differ from the baseline's recipe, the training curves,
the predicted differences and a verdict with its reason. Then the data's overlap figures, the commands, the
hardware and the times, and a short note on the earlier study this one replaces. Comparisons that have not run yet
are listed as such: the writer never invents a number.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmix_core.compare import stats, table
from lmix_core.compare.methods import METHODS, Comparison, differences
from lmix_core.compare.runner import Layout, cells, method_recipe, read_json, step_seconds
from lmix_core.compare.sizes import Sizes
from lmix_core.testbed.regimes import REGIMES
from studies.mixing.plan import CHECKS, NOT_WORSE_MARGIN, Check, verdict

OLD_STUDY_NOTE = """\
## The earlier study (replaced)

The first study ([seed-study.md](seed-study.md): `python -m studies.seed_papers`, kept in `studies/seed_papers/`)
could not decide its questions: 59% of its post-training problems (81% at level 1, 88% at level 2) appeared verbatim,
with the same worked solution, in its pretraining corpus, so SFT was rehearsal and the probe could not show
forgetting; every RL run from the SFT model ended at or below its start, so its rankings rewarded the methods that
moved least; all its gaps were below one binomial standard error of a 100-problem evaluation with one pretraining
seed; and its budgets differed in rollouts, tokens and objective within a comparison, with one optimiser step per
batch so that the clip never acted. This study replaces it: disjoint data by construction, a gate per regime, 2 data
seeds x 3 training seeds, bootstrap intervals and paired differences, and one shared objective per comparison.
"""


def check_outcome(layout: Layout, sizes: Sizes, comparison: Comparison, check: Check) -> dict[str, Any]:
    """The paired difference a check predicts: ``{"text", "difference", "passed", "against"}`` or ``missing``."""
    b_name = check.b
    if b_name == "best_static":
        statics = [m for m in comparison.methods if m.startswith(("switch_", "constant_"))]
        found = {m: table.results(layout, sizes, comparison, m) for m in statics}
        complete = {m: r for m, r in found.items() if r is not None}
        if len(complete) < len(found):
            return {"text": check.text(), "missing": True}
        b_name = max(statics, key=lambda m: table.matrix(complete[m], check.metric).mean())
    a = table.results(layout, sizes, comparison, check.a)
    b = table.results(layout, sizes, comparison, b_name)
    if a is None or b is None:
        return {"text": check.text(), "missing": True}
    d = stats.paired_difference(
        table.matrix(a, check.metric, check.a_deployment), table.matrix(b, check.metric)
    )
    e = d.estimate
    if check.kind == "better":
        passed, against = d.significant and e.mean > 0, d.significant and e.mean < 0
    else:
        passed, against = e.low > -NOT_WORSE_MARGIN, e.high < -NOT_WORSE_MARGIN
    text = check.text().replace("best_static's", f"the best static schedule's ({b_name})")
    return {
        "text": text,
        "difference": d.render(),
        "passed": passed,
        "against": against,
        "low": e.low,
        "high": e.high,
    }


def curves_png(
    layout: Layout, sizes: Sizes, comparison: Comparison, rows: Sequence[Mapping[str, Any]], path: Path
) -> Path | None:
    """Training accuracy per step (rollouts' mean correctness, averaged over cells) of every method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [r for r in rows if r.get("curve") and r["deployment"] == "default"]
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in drawn:
        y = np.array(r["curve"], dtype=float)
        if np.isfinite(y).any():
            ax.plot(np.arange(1, len(y) + 1), y, label=r["label"])
    ax.set_xlabel("step")
    ax.set_ylabel("training accuracy")
    ax.set_title(comparison.title, fontsize=9)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _times(layout: Layout) -> str:
    """The invocations' elapsed time (overlapping shards counted once), their summed process time and threads."""
    path = layout.out / "timings.json"
    if not path.exists():
        return "no invocation recorded"
    inv = read_json(path)["invocations"]
    spans = sorted(
        (start, start + i.get("wall_s", 0.0))
        for i in inv
        for start in [time.mktime(time.strptime(i["started"], "%Y-%m-%d %H:%M:%S"))]
    )
    elapsed, end = 0.0, float("-inf")
    for a, b in spans:  # the union of the invocations' intervals
        elapsed += max(0.0, b - max(a, end))
        end = max(end, b)
    total = sum(i.get("wall_s", 0.0) for i in inv)
    threads = sorted({i["threads"] for i in inv if "threads" in i})
    return (
        f"{len(inv)} invocation(s), {elapsed / 3600:.2f} h elapsed, {total / 3600:.2f} h summed over processes"
        + (f" (torch threads per process: {', '.join(map(str, threads))})" if threads else "")
    )


def _compute(layout: Layout, comparisons: Sequence[Comparison]) -> str:
    """The process time the run folders themselves record: pretraining and SFT-start steps (``metrics.jsonl``) and
    every compared run's training and evaluation (``result.json``). It does not depend on invocation records, so it
    also counts invocations that were killed before they could record their time."""
    pretrain = sum(step_seconds(run) for run in sorted(layout.out.glob("pretrain/d*/run")))
    starts = sum(step_seconds(run) for run in sorted(layout.out.glob("start*/d*-t*")))
    runs = sum(  # a run resumed before its wall time counted earlier segments: at least its summed step times
        max(c["wall_s"], c["train_s"])
        for comparison in comparisons
        for path in sorted((layout.out / comparison.name).glob("*/d*-t*/result.json"))
        for c in [read_json(path)["costs"]]
    )
    return (
        f"{(pretrain + starts + runs) / 3600:.2f} h of process time in the run folders: pretraining "
        f"{pretrain / 3600:.2f} h, SFT starting models {starts / 3600:.2f} h, compared runs with their evaluation "
        f"{runs / 3600:.2f} h (the starting models' evaluations and the report are not included)"
    )


def _progress(
    layout: Layout, sizes: Sizes, comparisons: Sequence[Comparison], gates: Mapping[str, Any]
) -> str:
    """How many of the planned runs have finished (a gate that failed leaves its comparison's other runs out);
    ``gates``: each comparison's :func:`_gate`."""
    planned = done = 0
    for c in comparisons:
        gate = gates[c.name]
        skipped = gate is not None and not gate.get("provisional") and not gate["passed"]
        for m in c.to_run(gate_passed=not skipped):
            for d, t in cells(sizes):
                planned += 1
                done += (layout.run_dir(c.name, m, d, t) / "result.json").exists()
    state = "the study is complete" if done == planned else "the study is still running; verdicts may change"
    return f"Runs finished: {done} of {planned} ({state})."


def _gate(layout: Layout, sizes: Sizes, comparison: Comparison) -> dict[str, Any] | None:
    """The gate on every cell when its runs are all there (a shard may have written one on its own cells only),
    else the gate file as written (``None`` when the comparison has not reached its gate)."""
    from lmix_core.compare.gate import check_gate

    path = layout.gate(comparison.name)
    if not path.exists():
        return None
    provisional = dict(read_json(path)) | {"provisional": True}
    if table.results(layout, sizes, comparison, "start") is None:  # some cell's start is not evaluated yet
        return provisional
    try:
        return check_gate(layout, sizes, comparison) | {"cells": [list(c) for c in cells(sizes)]}
    except ValueError:  # some cell's gate runs have not finished
        return provisional


def section(
    layout: Layout,
    sizes: Sizes,
    comparison: Comparison,
    figures: Path,
    link: str,
    gate: Mapping[str, Any] | None,
) -> tuple[str, str]:
    """The markdown section of one comparison and its verdict; ``gate``: the comparison's :func:`_gate`."""
    regime = REGIMES[comparison.regime]
    methods = {m: METHODS[m] for m in comparison.methods}
    out = [f"### {comparison.title}", "", f"*{comparison.paper}.* Claim: {comparison.claim}", ""]
    out += [
        f"**Regime `{regime.name}`**: {regime.claim}; starts from `{regime.start}`, trains on `{regime.train_file}`, "
        f"evaluated on `{regime.eval_file}` (see [study-design.md](study-design.md#regimes)).",
        "",
    ]
    if gate is None:
        out += ["Not run yet.", ""]
        v, why = verdict(None, [])
        out += [f"**Verdict: {v}.** {why}.", ""]
        return "\n".join(out), v
    if gate.get("provisional"):
        out += [
            f"**Gate** (`{gate['gate']}`), provisional: checked by a shard on its own cells "
            f"before every cell's gate runs had finished: "
            f"{'passed' if gate['passed'] else 'failed'}: {gate['reason']}.",
            "",
        ]
    else:
        out += [
            f"**Gate** (`{gate['gate']}`): {'passed' if gate['passed'] else 'failed'}: {gate['reason']}.",
            "",
        ]
    rows = table.rows(layout, sizes, comparison, methods)
    out += [table.render(rows, baseline_label=METHODS[comparison.baseline].label), ""]
    out += [
        "Mean [95% bootstrap interval over problems and seeds]; Δ: paired difference against the baseline "
        "(`*`: significant at 5%). Costs are means per run.",
        "",
    ]
    d, t = cells(sizes)[0]
    mappings = {n: method_recipe(layout, sizes, comparison, m, d, t) for n, m in methods.items()}
    diffs = differences(mappings, comparison.baseline, {n: m.reasons for n, m in methods.items()})
    shared = json.dumps(comparison.shared) if comparison.shared else "none"
    out += [
        f"Shared by every method beyond the default recipe: `{shared}`. Values that differ from the baseline:",
        "",
    ]
    out += ["| method | recipe value | baseline | this method | why |", "|---|---|---|---|---|"]
    out += [
        f"| {r['method']} | `{r['key']}` | {r['baseline']} | {r['value']} | {r['reason']} |" for r in diffs
    ]
    out.append("")
    png = curves_png(layout, sizes, comparison, rows, figures / f"study-v2-{comparison.name}-curves.png")
    if png is not None:
        out += [f"![{comparison.name} curves]({link}/{png.name})", ""]
    outcomes = [check_outcome(layout, sizes, comparison, c) for c in CHECKS[comparison.name]]
    out += ["Predicted differences:", ""]
    for o in outcomes:
        mark = "not run" if o.get("missing") else ("yes" if o["passed"] else "no")
        out.append(f"- {o['text']}: {o.get('difference', '')} → {mark}")
    v, why = verdict(gate, outcomes)
    if gate.get("provisional"):
        v, why = "not decided yet", "the gate runs of some cells have not finished"
    out += ["", f"**Verdict: {v}.** {why}.", ""]
    return "\n".join(out), v


def write_report(
    layout: Layout, sizes: Sizes, comparisons: Sequence[Comparison], target: Path, *, command: str
) -> Path:
    """Write the whole report to ``target`` (figures beside it in ``results/``) from the run folders."""
    figures = target.parent / "results"
    sections, verdicts = [], []
    gates = {c.name: _gate(layout, sizes, c) for c in comparisons}  # each rechecked once (a bootstrap)
    for c in comparisons:
        text, v = section(layout, sizes, c, figures, "results", gates[c.name])
        sections.append(text)
        verdicts.append((c, v))
    overlaps = []
    for d in sizes.data_seeds:
        path = layout.data(d) / "overlaps.json"
        if path.exists():
            f = read_json(path)
            shared = sum(f["pairs"].values())
            overlaps.append(
                f"- data seed {d}: "
                + ", ".join(f"{k} {n}" for k, n in f["sizes"].items())
                + f" distinct problems; problems shared between files of different roles: {shared} "
                f"(over {len(f['pairs'])} pairs)"
            )
    lines = [
        "# Results",
        "",
        "## Study v2: SFT/RL mixing methods on a testbed that can separate them",
        "",
        f"Generated by `{command} --report-only` from the run folders in `{layout.out}`; do not edit by hand. "
        "The design (regimes, gates, budgets, statistics) is in [study-design.md](study-design.md).",
        "",
        f"Sizes: preset `{sizes.preset}`, data seeds {list(sizes.data_seeds)}, training seeds "
        f"{list(sizes.train_seeds)}, {sizes.post.steps} steps x {sizes.post.prompts_per_step} questions x "
        f"{sizes.post.group_size} rollouts per run, {sizes.eval_samples} samples per held-out problem.",
        "",
        "### Summary",
        "",
        _progress(layout, sizes, comparisons, gates),
        "",
        *[f"- {c.title}: **{v}**" for c, v in verdicts],
        "",
        "### Data",
        "",
        *(overlaps or ["- no data written yet"]),
        "",
        *sections,
        "### Commands, hardware and times",
        "",
        f"- the study: `{command}` (interrupt at any point; the same command continues; `--report-only` "
        "rewrites this file)",
        f"- one run: its resolved recipe is `{layout.out}/<comparison>/<method>/d<D>-t<T>/recipe.toml`; "
        "`lmix run <that file> --out DIR` repeats it (the data and starting models are under "
        f"`{layout.out}/data`, `{layout.out}/pretrain`, `{layout.out}/start` and `{layout.out}/start-<SFT file>`)",
        f"- hardware: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}, "
        f"Python {platform.python_version()}",
        f"- times: {_times(layout)}",
        f"- compute: {_compute(layout, comparisons)}",
        "",
        "The logit-averaging comparison has not been rerun at a larger scale on a GPU.",
        "",
        OLD_STUDY_NOTE,
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines))
    return target


__all__ = ["check_outcome", "curves_png", "section", "write_report"]
