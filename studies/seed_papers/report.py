"""Tables (mean ± std over seeds), plots and the sections of ``docs/seed-study.md``, the study's page.

Every number in the report is read from the study's output folder: each run's ``result.json`` and each pretrained
checkpoint's ``ck<i>.result.json`` (:mod:`studies.seed_papers.stages`). A row whose runs are missing says so; nothing is
filled in. The aggregated tables are also written as ``report/tables.json``.

The markdown goes between ``<!-- lmix-study:<preset>:begin -->`` and ``<!-- lmix-study:<preset>:end -->`` in the
page, replacing only that block on later runs; everything else on the page (its banner, the other preset's block,
the discussions) is left as it is. The first time, a discussion section with a clearly marked placeholder
follows the block: it is written by a person after looking at the numbers, never generated.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from studies.seed_papers.plan import COMPARISONS, RUNS, Comparison, Row, runs_for
from studies.seed_papers.sizes import Sizes
from studies.seed_papers.stages import REPO, Layout, pretrain_seed, read_json, recipes_dir, write_json

#: Table columns: (heading, where the value is in a deployment's evals, whether it is a fraction in [0, 1]).
METRICS: tuple[tuple[str, tuple[str, str], bool], ...] = (
    ("pass@1", ("task", "pass@1"), True),
    ("pass@k", ("task", "pass@k"), True),
    ("format", ("task", "format_rate"), True),
    ("probe EM", ("probe", "pass@1"), True),
    ("probe NLL", ("probe", "nll"), False),
    ("held-out NLL", ("task", "nll"), False),
)
PLACEHOLDER = "**To be written after the run.**"


def _value(evals: Mapping[str, Any], deployment: str, where: tuple[str, str], k: int) -> float | None:
    part = (evals.get(deployment) or {}).get(where[0]) or {}
    key = f"pass@{k}" if where[1] == "pass@k" else where[1]
    value = part.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def row_results(layout: Layout, sizes: Sizes, row: Row, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The results behind a row: one per seed for a run, one per distinct pretraining seed for a checkpoint."""
    out = []
    if row.source == "base":
        ck = row.key.split("@", 1)[1]
        for pseed in dict.fromkeys(pretrain_seed(sizes, s) for s in seeds):
            path = layout.base_result(pseed, ck)
            if path.exists():
                out.append(read_json(path))
        return out
    for seed in seeds:
        path = layout.run_dir(seed, row.key) / "result.json"
        if path.exists():
            out.append(read_json(path))
    return out


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}``; std is the sample standard deviation (0 for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals), "values": vals}


def aggregate(layout: Layout, sizes: Sizes, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every comparison's rows with mean ± std of each metric and of the training time, over the seeds."""
    k = sizes.eval.samples
    tables = []
    for comp in COMPARISONS:
        rows = []
        for row in comp.rows:
            results = row_results(layout, sizes, row, seeds)
            metrics = {
                name: mean_std(
                    [v for r in results if (v := _value(r["evals"], row.deployment, where, k)) is not None]
                )
                for name, where, _ in METRICS
            }
            metrics["train time (s)"] = mean_std([r["train_s"] for r in results if row.source == "run"])
            rows.append(
                {
                    "label": row.label,
                    "key": row.key,
                    "deployment": row.deployment,
                    "group": row.group,
                    "recipe": RUNS[row.key].recipe if row.source == "run" else None,
                    "seeds": [r["seed"] for r in results],
                    "metrics": metrics,
                }
            )
        tables.append({"number": comp.number, "title": comp.title, "rows": rows})
    return tables


def _cell(stat: Mapping[str, Any], digits: int) -> str:
    if stat["n"] == 0:
        return "not run"
    if stat["n"] == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _rel(target: Path, results_md: Path) -> str:
    return os.path.relpath(target, results_md.parent)


def markdown_table(table: Mapping[str, Any], k: int, results_md: Path) -> str:
    heads = [name.replace("pass@k", f"pass@{k}") for name, _, _ in METRICS] + ["train time (s)"]
    lines = ["| method | n | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    group = None
    for row in table["rows"]:
        if row["group"] and row["group"] != group:
            group = row["group"]
            lines.append(f"| **from {group}** | | " + " | ".join("" for _ in heads) + " |")
        m = row["metrics"]
        n = max(s["n"] for s in m.values())
        label = row["label"]
        if row["recipe"]:
            target = _rel(recipes_dir() / f"{row['recipe']}.toml", results_md)
            label += f" ([`{row['recipe']}`]({target}))"
        time_cell = _cell(m["train time (s)"], 0) if row["recipe"] else "—"
        cells = [_cell(m[name], 3) for name, _, _ in METRICS] + [time_cell]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------------------


def plot_bars(table: Mapping[str, Any], out: Path, k: int) -> Path | None:
    """Mean ± std of pass@1, pass@k and the probe's exact match per row (rows that have results)."""
    rows = [r for r in table["rows"] if r["metrics"]["pass@1"]["n"]]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (("pass@1", "pass@1"), ("pass@k", f"pass@{k}"), ("probe EM", "probe exact match"))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 3.6))
    width = 0.8 / len(names)
    for j, (key, label) in enumerate(names):
        means = [r["metrics"][key]["mean"] or 0.0 for r in rows]
        stds = [r["metrics"][key]["std"] or 0.0 for r in rows]
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=label)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [(f"{r['group']}: " if r["group"] else "") + r["label"] for r in rows],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    ax.set_ylim(0, 1)
    ax.set_title(f"comparison {table['number']}: mean ± std over seeds", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_curves(layout: Layout, comp: Comparison, seed: int, out_dir: Path, stem: str) -> list[Path]:
    """``lmix plot`` curves (reward, train accuracy, loss) of the comparison's runs of one seed."""
    from lmix_core.plotting import plot_runs

    groups: dict[str, list[Path]] = {}
    for row in comp.rows:
        run_dir = layout.run_dir(seed, row.key)
        if row.source == "run" and (run_dir / "metrics.jsonl").exists() and row.deployment == "default":
            groups.setdefault(row.group, []).append(run_dir)
    out = []
    for group, dirs in groups.items():
        dirs = list(dict.fromkeys(dirs))
        name = f"{stem}-curves{'-' + group if group else ''}.png"
        out.append(plot_runs(dirs, out_dir / name))
    return out


# -- hardware and times ----------------------------------------------------------------------------------------


def hardware() -> dict[str, Any]:
    """nproc, usable cores, CPU model, memory, torch/transformers/python versions, torch threads."""
    import torch
    import transformers

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "nproc": os.cpu_count(),
        "usable_cores": usable,
        "cpu": cpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def times(layout: Layout, sizes: Sizes, seeds: Sequence[int]) -> dict[str, Any]:
    """Wall time of the study's invocations, pretraining's step time, and the runs' training/evaluation time."""
    from lmix_core.compare.runner import step_seconds

    log_file = layout.out / "timings.json"
    invocations = read_json(log_file)["invocations"] if log_file.exists() else []
    pseeds = sorted({pretrain_seed(sizes, s) for s in seeds})
    runs = [read_json(p) for s in seeds for p in sorted((layout.out / f"seed{s}").glob("*/result.json"))]
    return {
        "study_wall_s": sum(i.get("wall_s", 0.0) for i in invocations),
        "invocations": invocations,
        "pretrain_train_s": {p: step_seconds(layout.pretrain_root(p) / "run") for p in pseeds},
        "runs": len(runs),
        "runs_train_s": sum(r["train_s"] for r in runs),
        "runs_wall_s": sum(r.get("run_wall_s", 0.0) + r.get("eval_s", 0.0) for r in runs),
    }


# -- markdown --------------------------------------------------------------------------------------------------


def _budget_line(b: Mapping[str, Any]) -> str:
    return (
        f"{b['steps']} steps × {b['prompts_per_step']} prompts (× {b['group_size']} rollouts on sampling steps), "
        f"≤ {b['max_new_tokens']} new tokens, lr {b['lr']:g} (constant after a {b['warmup_steps']}-step warm-up)"
    )


def design_section(sizes: Sizes, results_md: Path) -> str:
    s = sizes.to_dict()
    pretrain_toml = _rel(recipes_dir() / "pretrain.toml", results_md)
    data_md = _rel(REPO / "docs" / "data.md", results_md)
    m, d, p, e = s["model"], s["data"], s["pretrain"], s["eval"]
    return "\n".join(
        [
            "### Set-up",
            "",
            f"- **Model**: a {m['num_layers']}-layer {m['arch']} (hidden {m['hidden_size']}, {m['num_heads']} heads, "
            f"{m['num_kv_heads']} KV heads) with the byte-level demo tokenizer, **pretrained from scratch by lmix** "
            f"([`pretrain.toml`]({pretrain_toml}): the `sft` mixer over plain text, "
            f"[`data.text_column`]({data_md}#plain-text-pretraining)) for {p['steps']} steps × {p['docs_per_step']} "
            f"documents, lr {p['lr']:g} cosine. Checkpoints kept at steps {', '.join(map(str, p['checkpoints']))} "
            f"(`ck1`, `ck2`, `ck3`; `ck3` is the final model). "
            + (
                "One pretraining per seed."
                if p["per_seed"]
                else f"One pretraining (seed {p['seed']}) shared by all seeds."
            ),
            f"- **Corpus**: {d['corpus_documents']} documents of {d['items_per_document']} "
            f"item{'s' if d['items_per_document'] > 1 else ''} each, worked solutions, arithmetic facts and probe items "
            f"weighted {d['corpus_solutions']:g} / {d['corpus_facts']:g} / {d['corpus_probe']:g} "
            "(`lmix_core.demo.task.generate_corpus`), train split only.",
            f"- **Task**: the demo's arithmetic at levels {', '.join(map(str, d['levels']))} ({d['style']} worked "
            f"solutions ending in `\\boxed{{}}`), {d['train_size']} training problems with demonstrations, "
            f"{d['eval_size']} held-out problems. Prompts are plain text (`Compute ….` and a newline), as in the corpus.",
            f"- **General-capability probe**: {d['probe_size']} held-out string tasks (reverse, sort, count; "
            "`generate_probe`) that only the corpus contains: post-training never sees them. Scored by greedy exact "
            "match and by the NLL of the answer.",
            f"- **Metrics** (every final model, every deployment): pass@1 and pass@{e['samples']} from {e['samples']} "
            f"samples at temperature {e['temperature']:g} (unbiased estimator), format compliance (the completion ends "
            "with one `\\boxed{integer}`), probe exact match (greedy) and NLL (the answer's tokens given the prompt, "
            "under the deployed distribution), held-out NLL (the trained policy's, on the held-out demonstrations "
            "and EOS), training time (the sum of the steps' times, without start-up or evaluation).",
            f"- **Budgets**, equal for every method: from a pretrained checkpoint {_budget_line(s['post'])}; "
            f"comparison 1's RL runs from the SFT model {_budget_line(s['from_sft'])}. Schedules given in steps by the "
            "papers are scaled to the run: SFT→RL switches at half, SASR warms up for a quarter, Prefix-RFT's prefix "
            "fraction and CHORD's μ decay over the whole run.",
            f"- **Seeds**: {', '.join(map(str, s['seeds']))} (training seed: data order, sampling, SASR's draws; the "
            "data are the same for every seed). Cells are mean ± sample std over the seeds; `n` is the number of "
            "results in a cell.",
        ]
    )


def render(layout: Layout, sizes: Sizes, seeds: Sequence[int], results_md: Path) -> str:
    """The study's markdown block (between its markers); plots go in a folder named after the page
    (``docs/seed-study/`` for ``docs/seed-study.md``)."""
    k = sizes.eval.samples
    tables = aggregate(layout, sizes, seeds)
    write_json(layout.out / "report" / "tables.json", tables)
    fig_dir = results_md.parent / results_md.stem
    preset = sizes.preset
    title = {
        "full": f"## Study: SFT/RL mixing at CPU scale ({len(seeds)} seeds)",
        "quick": f"## Study, quick variant ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})",
        "smoke": "## Study, smoke sizes (a pipeline check, not results)",
    }[preset]
    flag = {"full": "", "quick": " --quick", "smoke": " --smoke"}[preset]
    out = [
        title,
        "",
        "Reproduces the seed papers' comparisons at a scale that runs on 2 CPU cores. Generated by "
        f"`python -m studies.seed_papers{flag} --report-only` from the run folders; do not edit between the markers.",
        "",
        design_section(sizes, results_md),
        "",
    ]
    any_result = any(r["metrics"]["pass@1"]["n"] for t in tables for r in t["rows"])
    for comp, table in zip(COMPARISONS, tables, strict=True):
        out += [f"### Comparison {comp.number}: {comp.title}", "", f"*{comp.paper}.* Claim: {comp.claim}", ""]
        out += [markdown_table(table, k, results_md), ""]
        if any(r["metrics"]["pass@1"]["n"] for r in table["rows"]):
            stem = f"study-{preset}-c{comp.number}"
            bars = plot_bars(table, fig_dir / f"{stem}-bars.png", k)
            curves = plot_curves(layout, comp, seeds[0], fig_dir, stem)
            for path in [p for p in (bars, *curves) if p is not None]:
                rel = os.path.relpath(path, results_md.parent)
                out += [f"![{path.stem}]({rel})", ""]
    if not any_result:
        out += ["No run has finished yet: every cell says `not run`.", ""]
    out += ["### Hardware and times", ""]
    if any_result:
        hw = hardware()
        tm = times(layout, sizes, seeds)
        out += [
            f"- CPU: {hw['cpu']}, nproc {hw['nproc']} ({hw['usable_cores']} usable), torch {hw['torch']} "
            f"({hw['torch_threads']} threads), transformers {hw['transformers']}, Python {hw['python']}, "
            f"{hw['platform']}.",
            f"- Study wall time (every invocation on `{layout.out}`, interrupted ones included): "
            f"{tm['study_wall_s'] / 60:.1f} min.",
            "- Pretraining step time: "
            + ", ".join(f"seed {p}: {v / 60:.1f} min" for p, v in tm["pretrain_train_s"].items())
            + ".",
            f"- Post-training: {tm['runs']} runs, {tm['runs_train_s'] / 60:.1f} min of training steps, "
            f"{tm['runs_wall_s'] / 60:.1f} min with start-up and evaluation.",
            "",
        ]
    else:
        out += ["Written by the study when it has run (the machine it ran on, its times).", ""]
    out += [
        "### Commands",
        "",
        "The whole study, then this section alone from the finished runs:",
        "",
        "```bash",
        f"python -m studies.seed_papers{flag} --out {layout.out}",
        f"python -m studies.seed_papers{flag} --out {layout.out} --report-only",
        "```",
        "",
        "Each training stage is one `lmix run` (its `command.txt`); the study runs them in this order. The data are "
        "drawn by `studies.seed_papers.stages.write_data` (the `data` table of `studies/seed_papers/sizes.toml`); each final "
        "model and each kept checkpoint is evaluated by `studies.seed_papers.stages.evaluate_model` (`result.json`).",
        "",
        "<details><summary>every lmix run command</summary>",
        "",
        "```bash",
        *commands(layout, sizes, seeds),
        "```",
        "",
        "</details>",
    ]
    return "\n".join(out) + "\n"


def commands(layout: Layout, sizes: Sizes, seeds: Sequence[int]) -> list[str]:
    """The recorded ``lmix run`` commands: pretraining segments (each followed by copying its model out), runs."""
    lines = []
    for pseed in sorted({pretrain_seed(sizes, s) for s in seeds}):
        root = layout.pretrain_root(pseed)
        for i in range(1, len(sizes.pretrain.checkpoints) + 1):
            path = root / f"ck{i}.command.txt"
            if path.exists():
                lines += [path.read_text().strip(), f"cp -r {root / 'run' / 'model'} {root / f'ck{i}'}"]
    for seed in seeds:
        for run in runs_for(COMPARISONS):  # the order the study trains them in (sft@ck3 before runs from it)
            path = layout.run_dir(seed, run.name) / "command.txt"
            if path.exists():
                lines.append(path.read_text().strip())
    return lines or ["# nothing has run yet"]


def begin_marker(preset: str) -> str:
    return f"<!-- lmix-study:{preset}:begin -->"


def end_marker(preset: str) -> str:
    return f"<!-- lmix-study:{preset}:end -->"


def discussion(preset: str) -> str:
    return "\n".join(
        [
            f"<!-- lmix-study:{preset}:discussion -->",
            "### Discussion" + ("" if preset == "full" else f" ({preset})"),
            "",
            f"{PLACEHOLDER} Which of the seeds' claims reproduce at this scale and which do not, and why that may be, "
            "written from the tables above (this section is not generated and is never overwritten).",
            "",
        ]
    )


def write_markdown(results_md: Path, preset: str, block: str) -> Path:
    """Replace the preset's block in ``results_md`` (append it, then a discussion placeholder, the first time)."""
    begin, end = begin_marker(preset), end_marker(preset)
    wrapped = f"{begin}\n{block}{end}\n"
    text = results_md.read_text(encoding="utf-8") if results_md.exists() else "# The seed papers study\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + wrapped.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + wrapped
    if f"<!-- lmix-study:{preset}:discussion -->" not in text:
        text = text.rstrip("\n") + "\n\n" + discussion(preset)
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return results_md


def write_report(layout: Layout, sizes: Sizes, seeds: Sequence[int], results_md: Path) -> Path:
    """Aggregate, plot and write the study's section into ``results_md``; returns its path."""
    block = render(layout, sizes, seeds, results_md)
    (layout.out / "report").mkdir(parents=True, exist_ok=True)
    (layout.out / "report" / "results.md").write_text(block)
    return write_markdown(results_md, sizes.preset, block)


def print_tables(layout: Layout, sizes: Sizes, seeds: Sequence[int]) -> None:
    """The tables on stdout (what the markdown holds, without links)."""
    k = sizes.eval.samples
    for table in aggregate(layout, sizes, seeds):
        print(f"\ncomparison {table['number']}: {table['title']}")
        for row in table["rows"]:
            m = row["metrics"]
            label = (f"{row['group']} " if row["group"] else "") + row["label"]
            print(
                f"  {label:<44} pass@1 {_cell(m['pass@1'], 3):<15} pass@{k} {_cell(m['pass@k'], 3):<15} "
                f"format {_cell(m['format'], 3):<15} probe {_cell(m['probe EM'], 3):<15}"
            )


__all__ = ["aggregate", "hardware", "mean_std", "print_tables", "render", "write_markdown", "write_report"]
