"""``lmix plot RUN_DIR [RUN_DIR ...] [--out FILE]``: reward, accuracy and loss curves of runs, side by side."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmix_core.errors import CheckpointError, LmixError

PANELS = (
    ("reward_mean", "reward"),
    ("accuracy", "train accuracy"),
    ("loss", "loss"),
    ("pass@1", "held-out pass@1"),
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a per-step jsonl log (``[]`` when the file does not exist).

    A last line cut short (the run was killed while writing it) is skipped, with a one-line note on stderr, as
    ``lmix run --resume`` drops it; any other line that is not a JSON object with an integer ``step`` raises.

    Raises:
        CheckpointError: a line other than the last is unreadable; the message names the file and the line.
    """
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            if i == last:
                print(f"lmix plot: {path}: skipped its last line, cut short ({exc})", file=sys.stderr)
                break
            raise CheckpointError(
                f"cannot read {str(path)!r}: line {i + 1} is not valid JSON ({exc})"
            ) from None
        if not (isinstance(row, dict) and isinstance(row.get("step"), int)):
            raise CheckpointError(
                f"cannot read {str(path)!r}: line {i + 1} is not a JSON object with an integer 'step' "
                f"(got {line.strip()!r:.80})"
            )
        rows.append(row)
    return rows


def load_run(run_dir: Path) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """``(name, metrics rows, evaluation rows)`` of a run directory written by ``lmix run``."""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if not metrics:
        raise LmixError(f"{str(run_dir)!r} has no metrics.jsonl; pass run directories written by `lmix run`")
    return run_dir.name, metrics, read_jsonl(run_dir / "eval.jsonl")


def step_offsets(
    runs: Sequence[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]], sequential: bool
) -> list[int]:
    """Where each run's step 0 goes on the x axis: 0 for all, or, when the runs follow one another (``sequential``,
    e.g. SFT then RL from its model), the sum of the earlier runs' step counts."""
    offsets, total = [], 0
    for _, metrics, _ in runs:
        offsets.append(total if sequential else 0)
        total += max(int(r["step"]) for r in metrics) + 1
    return offsets


def plot_runs(run_dirs: Sequence[Path], out: Path, *, sequential: bool = False) -> Path:
    """Write a PNG with one panel per metric and one line per run; returns its path.

    ``sequential`` places each run after the previous one on the step axis (a pipeline's stages); otherwise every
    run starts at step 0 (runs compared side by side).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(d) for d in run_dirs]
    offsets = step_offsets(runs, sequential)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (key, title) in zip(axes, PANELS):
        for i, ((name, metrics, evals), offset) in enumerate(zip(runs, offsets)):
            rows = evals if key == "pass@1" else metrics
            pts = [(offset + r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
            if pts:
                xs, ys = zip(*pts)
                marker = "o" if key == "pass@1" else None
                ax.plot(xs, ys, color=f"C{i}", marker=marker, markersize=3, label=name)  # one colour per run
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_command(args: Any) -> int:
    dirs = [Path(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else dirs[0] / "curves.png"
    print(f"lmix plot: wrote {plot_runs(dirs, out, sequential=bool(getattr(args, 'sequential', False)))}")
    return 0
