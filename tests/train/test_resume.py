"""Resume from a real kill or signal reproduces the uninterrupted run; what `lmix run` does with an existing --out."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.helpers import write_recipe

WALL_CLOCK = {"step_time_s"}
ENV = {**os.environ, "WANDB_MODE": "disabled"}


def _lmix(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmix", *args]


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {n} lines (exit {proc.poll()})")


@pytest.fixture(scope="module")
def reference(tiny_run_inputs, tmp_path_factory):
    """The recipe (5 steps, a checkpoint every 2) and its uninterrupted run."""
    root = tmp_path_factory.mktemp("resume")
    recipe = write_recipe(root / "r.toml", tiny_run_inputs, steps=5, extra_train="save_every = 2")
    full = root / "full"
    subprocess.run(_lmix("run", str(recipe), "--out", str(full)), check=True, env=ENV, capture_output=True)
    return recipe, full


def _same_as(run: Path, full: Path) -> None:
    assert _metrics(run) == _metrics(full)
    assert (
        json.loads((run / "summary.json").read_text())["final_eval"]
        == json.loads((full / "summary.json").read_text())["final_eval"]
    )


def test_sigkill_then_resume_reproduces_metrics(reference, tmp_path):
    """Kill mid-run after the step-2 checkpoint, resume, compare every deterministic metric step by step."""
    recipe, full = reference
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        _lmix("run", str(recipe), "--out", str(cut)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (cut / "checkpoints" / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside step 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (cut / "checkpoints" / "latest").exists()
    subprocess.run(
        _lmix("run", str(recipe), "--out", str(cut), "--resume"), check=True, env=ENV, capture_output=True
    )
    _same_as(cut, full)


def test_sigint_then_sigterm_checkpoint_and_resume_exactly(reference, tmp_path):
    """Ctrl-C (SIGINT) after the first step: the step finishes, a checkpoint is written, the command exits 130 with
    how to resume; the resumed run is stopped by SIGTERM (exit 143) the same way; a last --resume completes the
    run exactly like the uninterrupted one."""
    recipe, full = reference
    cut = tmp_path / "cut"
    stops = []
    for sig, extra in ((signal.SIGINT, ()), (signal.SIGTERM, ("--resume",))):
        have = (
            len((cut / "metrics.jsonl").read_text().splitlines()) if (cut / "metrics.jsonl").exists() else 0
        )
        proc = subprocess.Popen(
            _lmix("run", str(recipe), "--out", str(cut), *extra),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for_lines(cut / "metrics.jsonl", have + 1, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 128 + sig, err
        assert f"{sig.name} received: finishing this step, then writing a checkpoint" in err, err
        done = len((cut / "metrics.jsonl").read_text().splitlines())
        assert f"stopped by {sig.name} after step {done} of 5" in err and "--resume" in err, err
        assert "Traceback" not in err, err
        assert (cut / "checkpoints" / f"step_{done:06d}" / "trainer.pt").is_file()
        assert (cut / "checkpoints" / "latest").read_text().strip() == f"step_{done:06d}"
        assert not (cut / "summary.json").exists()
        stops.append(done)
    assert stops[0] < stops[1] < 5, stops
    subprocess.run(
        _lmix("run", str(recipe), "--out", str(cut), "--resume"), check=True, env=ENV, capture_output=True
    )
    _same_as(cut, full)


def test_existing_run_directories(reference, tmp_path, capsys):
    """Without a flag an existing run is refused (exit 2); --resume of a finished run changes nothing (exit 0);
    --resume without a checkpoint is refused (exit 2); --resume-if-possible starts there instead; --overwrite
    deletes the run files only. All decided before any model loads, without a traceback."""
    from lmix_core.cli import main
    from lmix_core.errors import RunDirectoryError
    from lmix_core.train.run import plan_start

    recipe, full = reference
    before = {p: p.stat().st_mtime_ns for p in full.rglob("*")}
    assert main(["run", str(recipe), "--out", str(full)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err, err
    assert main(["run", str(recipe), "--out", str(full), "--resume"]) == 0
    assert f"lmix run: '{full}' is already complete (step 5 of 5); nothing to do" in capsys.readouterr().out
    assert main(["run", str(recipe), "--out", str(full), "--resume", "train.steps=3"]) == 2
    assert "finished at step 5; train.steps = 3 cannot shorten it" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in full.rglob("*")} == before  # nothing rewritten

    partial = tmp_path / "partial"  # a run stopped before its first checkpoint
    partial.mkdir()
    (partial / "metrics.jsonl").write_text('{"step": 0}\n')
    (partial / "notes.txt").write_text("mine")
    assert main(["run", str(recipe), "--out", str(partial), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds a run (metrics.jsonl) but no checkpoint to resume from" in err, err
    assert "--resume-if-possible" in err and "Traceback" not in err
    with pytest.raises(RunDirectoryError):
        plan_start(partial, "new", 5)
    assert plan_start(partial, "resume_if_possible", 5) == ("start", None)
    assert sorted(p.name for p in partial.iterdir()) == ["notes.txt"]  # the run's files only
    assert plan_start(partial, "new", 5) == ("start", None)
    assert plan_start(full, "resume_if_possible", 5)[0] == "complete"
    copy = tmp_path / "copy"
    shutil.copytree(full, copy)
    assert plan_start(copy, "overwrite", 5) == ("start", None) and list(copy.iterdir()) == []


def test_resume_without_a_run_directory_is_a_clear_error(tiny_run_inputs, tmp_path):
    """--resume on a directory that does not exist exits 2 with a message, not a traceback."""
    recipe = write_recipe(tmp_path / "r.toml", tiny_run_inputs)
    res = subprocess.run(
        _lmix("run", str(recipe), "--out", str(tmp_path / "nope"), "--resume"), capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
