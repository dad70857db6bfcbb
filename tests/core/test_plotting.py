"""`lmix plot`: run loading, the step axis of runs side by side or in sequence, and the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmix_core.errors import LmixError
from lmix_core.plotting import load_run, plot_runs, step_offsets


def _run(root: Path, name: str, steps: int, evals: list[tuple[int, float]]) -> Path:
    d = root / name
    d.mkdir()
    rows = [{"step": s, "loss": 1.0 / (s + 1), "reward_mean": 0.1 * s} for s in range(steps)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "eval.jsonl").write_text("".join(json.dumps({"step": s, "pass@1": p}) + "\n" for s, p in evals))
    return d


def test_sequential_runs_follow_one_another_on_the_step_axis(tmp_path: Path) -> None:
    """Side by side every run starts at 0; in sequence the second starts after the first's 600 steps."""
    runs = [
        load_run(_run(tmp_path, "sft", 600, [(600, 0.38)])),
        load_run(_run(tmp_path, "rl", 40, [(40, 0.52)])),
    ]
    assert step_offsets(runs, sequential=False) == [0, 0]
    assert step_offsets(runs, sequential=True) == [0, 600]


def test_plot_writes_a_png_and_rejects_a_folder_without_metrics(tmp_path: Path) -> None:
    a = _run(tmp_path, "sft", 5, [(5, 0.2)])
    b = _run(tmp_path, "rl", 3, [(3, 0.4)])
    out = plot_runs([a, b], tmp_path / "out" / "curves.png", sequential=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmixError, match="has no metrics.jsonl"):
        plot_runs([tmp_path / "empty"], tmp_path / "x.png")
