"""``python -m studies.mixing [--quick | --tiny] [--only format,hard] [--out DIR] [--report-only]``.

Runs the whole study v2 in one command, in dependency order: the testbed data and pretraining of every data seed,
the SFT starting models, then each comparison (its starting model's evaluation, the runs its gate reads, the gate,
and, when the gate passes, the other methods), rewriting the report after each comparison. Every stage is skipped
when its result is on disk and an interrupted run resumes from its latest checkpoint, so running the same command
again continues the study where it stopped. Sizes: :data:`lmix_core.compare.sizes.FULL` by default (about 4 hours
on 2 CPU cores, see ``docs/study-design.md``), ``--quick`` (one data seed, two training seeds, short runs) and
``--tiny`` (micro sizes for tests: the gates are reported, not enforced; the numbers mean nothing).

``--data-seeds 0`` restricts an invocation to some data seeds, so that one machine's cores can run the study as
several single-threaded processes side by side (one per data seed, each with its own data, pretraining and runs):
such a shard checks each gate on its own cells only (``--gate-cells all``: on every data seed's, once the other
shards' gate runs have finished) and writes its report to ``OUT/results-d<D>.md``; a last
invocation without the option then checks the gates on every cell, runs whatever the shards left (a method a
shard's gate held back, when the gate over every cell passes) and writes the report.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from lmix_core.compare import runner
from lmix_core.compare.methods import METHODS, Comparison
from lmix_core.compare.sizes import PRESETS, Sizes
from lmix_core.errors import LmixError, RunInterrupted
from studies.mixing import plan, report

#: The checkout the study belongs to (it runs from a checkout and writes its docs/results.md).
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = {
    "full": Path("runs/study-v2"),
    "quick": Path("runs/study-v2-quick"),
    "tiny": Path("runs/study-v2-tiny"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m studies.mixing", description="Run study v2 and write its report."
    )
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="one data seed, two training seeds, short runs")
    preset.add_argument(
        "--tiny", action="store_true", help="micro sizes: a pipeline check (gates not enforced)"
    )
    p.add_argument(
        "--only", default=None, help=f"comparisons to run, comma-separated, among {','.join(plan.ORDER)}"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/study-v2[-quick|-tiny])"
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="report file (default: docs/results.md for the full study, else OUT/results.md)",
    )
    p.add_argument(
        "--data-seeds",
        default=None,
        help="run only these data seeds (comma-separated): a shard of the study, one process per data seed",
    )
    p.add_argument(
        "--gate-cells",
        choices=("mine", "all"),
        default="mine",
        help="with --data-seeds: check each gate on this shard's cells (mine) or on every data seed's (all: "
        "the other shards' gate runs must have finished)",
    )
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from the run folders")
    p.add_argument(
        "--gates-only",
        action="store_true",
        help="run only what the regimes' gates read (starting models and gate runs), check the gates, stop",
    )
    return p


def _record(layout: runner.Layout, entry: dict[str, Any]) -> None:
    """Write (or update) this invocation's entry of ``timings.json``, keyed by its ``id``."""
    path = layout.out / "timings.json"
    layout.out.mkdir(parents=True, exist_ok=True)
    with open(layout.out / "timings.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # shards of one study finish side by side
        data = runner.read_json(path) if path.exists() else {"invocations": []}
        others = [i for i in data["invocations"] if i.get("id") != entry["id"]]
        data["invocations"] = [*others, entry]
        runner.write_json(path, data)


def run_study(
    sizes: Sizes,
    out: Path,
    *,
    only: Sequence[str] | None = None,
    results: Path,
    command: str = "python -m studies.mixing",
    log: Any = print,
    gates_only: bool = False,
    gate_sizes: Sizes | None = None,
) -> Path:
    """Run (or continue) the study and write the report; returns the report's path."""
    layout = runner.Layout(out)
    comparisons = plan.select(only)
    runner.check_out(layout, sizes)
    t0 = time.perf_counter()
    entry: dict[str, Any] = {
        "id": f"{os.getpid()}@{time.time():.6f}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "preset": sizes.preset,
        "data_seeds": list(sizes.data_seeds),
        "threads": torch.get_num_threads(),
        "finished": False,
        "wall_s": 0.0,
    }
    _record(layout, entry)

    def logged(msg: str) -> None:  # every message also records the time so far: a killed invocation keeps it
        entry["wall_s"] = time.perf_counter() - t0
        _record(layout, entry)
        log(msg)

    try:
        runner.prepare(layout, sizes, comparisons, logged)
        for c in comparisons:
            methods = {m: METHODS[m] for m in c.methods}
            runner.run_comparison(
                layout,
                sizes,
                c,
                methods,
                logged,
                enforce_gate=sizes.preset != "tiny",
                gate_only=gates_only,
                gate_sizes=gate_sizes,
            )
            report.write_report(layout, sizes, comparisons, results, command=command)
            left = runner.projection(layout, sizes, [(x, _to_run(layout, sizes, x)) for x in comparisons])
            if left["seconds"] is not None:
                logged(
                    f"{left['done']} runs finished, {left['left']} to go: about {left['seconds'] / 3600:.2f} h more "
                    "at the measured cost per step"
                )
        entry["finished"] = True
    finally:
        entry["wall_s"] = time.perf_counter() - t0
        _record(layout, entry)
    return report.write_report(layout, sizes, comparisons, results, command=command)


def _to_run(layout: runner.Layout, sizes: Sizes, comparison: Comparison) -> tuple[str, ...]:
    """The methods of ``comparison`` that will run: only the gate's when its gate failed (and is enforced)."""
    path = layout.gate(comparison.name)
    failed = sizes.preset != "tiny" and path.exists() and not runner.read_json(path)["passed"]
    return comparison.to_run(gate_passed=not failed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    sizes = gate_sizes = PRESETS[preset]
    out = args.out or DEFAULT_OUT[preset]
    results = args.results or (REPO / "docs" / "results.md" if preset == "full" else out / "results.md")
    if args.data_seeds is not None:
        try:
            seeds = tuple(int(x) for x in args.data_seeds.split(",") if x)
        except ValueError:
            seeds = ()
        if not seeds or not set(seeds) <= set(sizes.data_seeds):
            print(
                f"python -m studies.mixing: '--data-seeds' must name data seeds among {list(sizes.data_seeds)} "
                f"(got {args.data_seeds!r})",
                file=sys.stderr,
            )
            return 2
        sizes = attrs.evolve(sizes, data_seeds=seeds)
        results = args.results or out / f"results-d{'-'.join(map(str, seeds))}.md"
    flag = {"full": "", "quick": " --quick", "tiny": " --tiny"}[preset]
    command = f"python -m studies.mixing{flag}"
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[study v2 {time.perf_counter() - t0:8.1f}s] {msg}", flush=True)

    try:
        only = None if args.only is None else [x for x in args.only.split(",") if x]
        if args.report_only:
            path = report.write_report(runner.Layout(out), sizes, plan.select(only), results, command=command)
        else:
            path = run_study(
                sizes,
                out,
                only=only,
                results=results,
                command=command,
                log=log,
                gates_only=args.gates_only,
                gate_sizes=gate_sizes if args.gate_cells == "all" else None,
            )
    except RunInterrupted as exc:
        print(
            f"python -m studies.mixing: {exc}; run the same command again to continue where it stopped",
            file=sys.stderr,
        )
        return 128 + exc.signum
    except (LmixError, ValueError) as exc:
        print(f"python -m studies.mixing: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


__all__ = ["build_parser", "main", "run_study"]
