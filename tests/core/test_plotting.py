"""`lmix plot`: run loading, the step axis of runs side by side or in sequence, and the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmix_core.errors import CheckpointError, LmixError
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


def test_a_last_line_cut_by_a_kill_is_skipped_with_a_note(tmp_path: Path, capsys) -> None:
    """metrics.jsonl whose last line was cut mid-write: the complete rows load, one note names the file."""
    d = _run(tmp_path, "killed", 3, [(2, 0.5)])
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.2')
    with open(d / "eval.jsonl", "a") as f:
        f.write('{"step": 3, "pass@1"')
    _, metrics, evals = load_run(d)
    assert [r["step"] for r in metrics] == [0, 1, 2] and evals == [{"step": 2, "pass@1": 0.5}]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "metrics.jsonl: skipped its last line, cut short" in err[0]
    assert "eval.jsonl: skipped its last line" in err[1]


@pytest.mark.parametrize(
    ("line", "what"),
    [("{not json", "is not valid JSON"), ('{"loss": 1.0}', "is not a JSON object with an integer 'step'")],
)
def test_a_corrupt_line_before_the_last_names_file_and_line(
    tmp_path: Path, capsys, line: str, what: str
) -> None:
    """A bad line 2 of 3 is not a cut-off write: `lmix plot` exits 1 with the file and line, no traceback."""
    from lmix_core.cli import main

    d = _run(tmp_path, "bad", 3, [])
    rows = (d / "metrics.jsonl").read_text().splitlines()
    (d / "metrics.jsonl").write_text("\n".join([rows[0], line, rows[2]]) + "\n")
    with pytest.raises(CheckpointError, match=rf"metrics.jsonl'.*line 2 {what}"):
        load_run(d)
    assert main(["plot", str(d), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "metrics.jsonl" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
