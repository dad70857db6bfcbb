"""``lmix plot RUN_DIR [RUN_DIR ...] [--out FILE]``: reward, accuracy and loss curves of runs, side by side."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmix_core.errors import LmixError

PANELS = (
    ("reward_mean", "reward"),
    ("accuracy", "train accuracy"),
    ("loss", "loss"),
    ("pass@1", "held-out pass@1"),
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(run_dirs: Sequence[Path], out: Path) -> Path:
    """Write a PNG with one panel per metric and one line per run; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for d in run_dirs:
        metrics = read_jsonl(d / "metrics.jsonl")
        if not metrics:
            raise LmixError(f"{str(d)!r} has no metrics.jsonl; pass run directories written by `lmix run`")
        runs.append((d.name, metrics, read_jsonl(d / "eval.jsonl")))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (key, title) in zip(axes, PANELS):
        for name, metrics, evals in runs:
            rows = evals if key == "pass@1" else metrics
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if key == "pass@1" else None, markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_command(args: Any) -> int:
    dirs = [Path(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else dirs[0] / "curves.png"
    print(f"lmix plot: wrote {plot_runs(dirs, out)}")
    return 0
