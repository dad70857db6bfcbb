"""Kill sweep: SIGKILL ``lmix run`` at many random moments, resume each time, compare with the uninterrupted run.

The CI test (``tests/train/test_resume_kill.py``) kills one tiny run 10 times at chosen points; this script is the
larger, random version for any recipe::

    python scripts/kill_sweep.py RECIPE [KEY=VALUE ...] --out DIR [--kills 30] [--seed 0]

It runs RECIPE once without interruption into ``DIR/full``, then runs ``lmix run --resume-if-possible`` into
``DIR/cut`` again and again, each attempt SIGKILLed after a delay drawn uniformly from [0, T] (T: the uninterrupted
run's wall time), until ``--kills`` attempts were killed; a last attempt finishes the run. It prints where each kill
landed (what the run directory held) and exits 1 unless the metrics (wall-clock fields aside), the evaluations, the
final evaluation and the exported weights equal the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

WALL_CLOCK = {"step_time_s", "wall_time_s", "time_s"}


def lines(path: Path) -> list[dict]:
    """The complete JSON lines of a jsonl file, wall-clock fields removed (a line cut by a kill is skipped)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        rows.append({k: v for k, v in row.items() if k not in WALL_CLOCK})
    return rows


def phase(run: Path) -> str:
    ck = run / "checkpoints"
    staging = (
        sorted(p.name for p in ck.iterdir() if p.name.endswith((".tmp", ".old", ".del")))
        if ck.is_dir()
        else []
    )
    latest = (ck / "latest").read_text().strip() if (ck / "latest").exists() else "-"
    return (
        f"{len(lines(run / 'metrics.jsonl'))} metric lines, {len(lines(run / 'eval.jsonl'))} evaluations, "
        f"latest {latest}{', staging ' + ' '.join(staging) if staging else ''}"
        f"{', model/ written' if (run / 'model').exists() else ''}"
    )


def weights(model: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model / "model.safetensors"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    lmix = [sys.executable, "-m", "lmix", "run", args.recipe, *args.overrides]
    full, cut = args.out / "full", args.out / "cut"
    for d in (full, cut):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([*lmix, "--out", str(full)], check=True, env=env, capture_output=True)
    duration = time.perf_counter() - t0
    print(f"uninterrupted run: {duration:.1f}s")
    rng = random.Random(args.seed)
    expected = lines(full / "metrics.jsonl")
    killed = attempts = 0
    while killed < args.kills:
        delay = rng.uniform(0.0, duration)
        proc = subprocess.Popen(
            [*lmix, "--out", str(cut), "--resume-if-possible"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        attempts += 1
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
        got = lines(cut / "metrics.jsonl")
        ok = got == expected[: len(got)]
        print(
            f"kill {killed:3d} at {delay:6.2f}s (exit {proc.returncode}): {phase(cut)}{'' if ok else '  MISMATCH'}"
        )
        if not ok:
            return 1
        if (cut / "summary.json").exists():  # the attempt finished before its timer: start the chain again
            shutil.rmtree(cut)
    subprocess.run(
        [*lmix, "--out", str(cut), "--resume-if-possible"], check=True, env=env, capture_output=True
    )
    same = {
        "metrics": lines(cut / "metrics.jsonl") == expected,
        "evaluations": lines(cut / "eval.jsonl") == lines(full / "eval.jsonl"),
        "final evaluation": json.loads((cut / "summary.json").read_text())["final_eval"]
        == json.loads((full / "summary.json").read_text())["final_eval"],
    }
    wa, wb = weights(full / "model"), weights(cut / "model")
    same["weights"] = wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)
    print(f"{killed} kills over {attempts} attempts; equal to the uninterrupted run: {same}")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
