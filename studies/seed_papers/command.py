"""``python -m studies.seed_papers [--quick | --smoke] [--out DIR] [--seeds 0,1,2] [--only 1,4] [--report-only]``.

Runs the whole study in one command: data, pretraining from scratch (kept checkpoints), every post-training run
of the selected comparisons for every seed, their evaluation, then the tables, plots and the study's section of
``docs/seed-study.md``. Finished stages are skipped, so running the same command again resumes an interrupted study
(and only regenerates the report when everything is done). The sizes come from ``studies/seed_papers/sizes.toml``:
``full`` by default, ``quick`` with ``--quick`` (one seed), ``smoke`` with ``--smoke`` (micro sizes for tests).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lmix_core.errors import LmixError
from studies.seed_papers import plan, report, stages
from studies.seed_papers.sizes import SIZES_FILE, Sizes, load_sizes

#: ``quick`` has ``full``'s sizes with one seed, so both share a folder: a quick run is the full study's first seed.
DEFAULT_OUT = {"full": Path("runs/study"), "quick": Path("runs/study"), "smoke": Path("runs/study-smoke")}
#: The page ``full`` and ``quick`` write their sections into (figures in ``docs/seed-study/``); ``smoke`` writes
#: ``OUT/results.md``. Study v2 (``python -m studies.mixing``) owns ``docs/results.md``.
DEFAULT_RESULTS = stages.REPO / "docs" / "seed-study.md"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,2 (got {text!r})"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer (got {text!r})")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m studies.seed_papers",
        description="Run the seed papers study and write its tables, plots and docs/seed-study.md section.",
    )
    preset = p.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick", action="store_true", help="the 'quick' sizes: one seed (about 20 min on 2 cores)"
    )
    preset.add_argument(
        "--smoke", action="store_true", help="micro sizes: checks the pipeline in about a minute"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/study; --smoke: runs/study-smoke)"
    )
    p.add_argument(
        "--seeds", type=_ints, default=None, help="training seeds, e.g. 0,1,2 (default: the preset's)"
    )
    p.add_argument(
        "--only", type=_ints, default=None, help="comparisons to run, e.g. 1,4 (default: all four)"
    )
    p.add_argument(
        "--sizes",
        type=Path,
        default=SIZES_FILE,
        help="the sizes file (default: studies/seed_papers/sizes.toml)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="markdown file that receives the study's section (default docs/seed-study.md; --smoke: OUT/results.md)",
    )
    p.add_argument("--report-only", action="store_true", help="only regenerate tables, plots and markdown")
    p.add_argument("--no-report", action="store_true", help="run without writing the report")
    return p


def check_out(layout: stages.Layout, sizes: Sizes) -> None:
    """Refuse an output folder made with other sizes (results would mix); record the sizes in a new one."""
    path = layout.out / "sizes.json"
    mine = {k: v for k, v in sizes.to_dict().items() if k not in ("seeds", "preset")}
    if path.exists():
        theirs = stages.read_json(path)
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise LmixError(
                f"{str(layout.out)!r} holds a study run with other sizes (differing: {', '.join(diff)}); pass "
                "another --out, or delete the folder to start again"
            )
    else:
        stages.write_json(path, mine)


def record_invocation(layout: stages.Layout, entry: dict) -> None:
    path = layout.out / "timings.json"
    data = stages.read_json(path) if path.exists() else {"invocations": []}
    data["invocations"].append(entry)
    stages.write_json(path, data)


def run_study(
    sizes: Sizes,
    out: Path,
    *,
    only: Sequence[int] | None = None,
    results_md: Path | None = None,
    write_report: bool = True,
    log=None,  # noqa: ANN001 - callable(str) -> None
) -> dict:
    """Run (or resume) the study; returns ``{"runs": [result, ...], "report": path or None}``."""
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        (log or print)(f"[study {time.perf_counter() - t_start:7.1f}s] {msg}")

    layout = stages.Layout(out)
    comps = plan.select(only)
    check_out(layout, sizes)
    entry = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "preset": sizes.preset,
        "seeds": list(sizes.seeds),
        "only": [c.number for c in comps],
        "finished": False,
    }
    results = []
    try:
        stages.write_data(layout, sizes, say)
        for pseed in sorted({stages.pretrain_seed(sizes, s) for s in sizes.seeds}):
            stages.pretrain(layout, sizes, pseed, say)
            for ck in plan.bases_for(comps):
                stages.evaluate_base(layout, sizes, pseed, ck, say)
        runs = plan.runs_for(comps)
        total = len(runs) * len(sizes.seeds)
        done = 0
        for seed in sizes.seeds:
            for run in runs:
                done += 1
                say(f"[{done}/{total}] seed {seed}: {run.name}")
                results.append(stages.execute(layout, sizes, run, seed, say))
        entry["finished"] = True
    finally:
        entry["wall_s"] = time.perf_counter() - t_start
        record_invocation(layout, entry)
    path = None
    if write_report:
        target = results_md or layout.out / "results.md"
        path = report.write_report(layout, sizes, sizes.seeds, target)
        say(f"report: {path}")
    return {"runs": results, "report": path}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = "quick" if args.quick else "smoke" if args.smoke else "full"
    try:
        sizes = load_sizes(preset, args.sizes)
        if args.seeds is not None:
            import attrs

            sizes = attrs.evolve(sizes, seeds=args.seeds)
        out = args.out or DEFAULT_OUT[preset]
        results_md = args.results
        if results_md is None and preset != "smoke":
            results_md = DEFAULT_RESULTS
        if args.report_only:
            layout = stages.Layout(out)
            path = report.write_report(layout, sizes, sizes.seeds, results_md or out / "results.md")
            report.print_tables(layout, sizes, sizes.seeds)
            print(f"report: {path}")
            return 0
        result = run_study(sizes, out, only=args.only, results_md=results_md, write_report=not args.no_report)
        report.print_tables(stages.Layout(out), sizes, sizes.seeds)
        if result["report"] is not None:
            print(f"\nreport: {result['report']}")
        return 0
    except (LmixError, ValueError) as exc:
        print(f"python -m studies.seed_papers: {exc}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main", "run_study"]
