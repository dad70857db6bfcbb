"""A run killed with SIGKILL resumes from its last checkpoint and reproduces the uninterrupted metrics exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.train.helpers import write_recipe

WALL_CLOCK = {"step_time_s"}


def _lmix(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmix", *args]


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def test_sigkill_then_resume_reproduces_metrics(tiny_run_inputs, tmp_path):
    """Kill mid-run after the step-2 checkpoint, resume, compare every deterministic metric step by step."""
    recipe = write_recipe(tmp_path / "r.toml", tiny_run_inputs, steps=5, extra_train="save_every = 2")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    full = tmp_path / "full"
    subprocess.run(_lmix("run", str(recipe), "--out", str(full)), check=True, env=env, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        _lmix("run", str(recipe), "--out", str(cut)),
        env=env,
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
        _lmix("run", str(recipe), "--out", str(cut), "--resume"), check=True, env=env, capture_output=True
    )
    assert _metrics(cut) == _metrics(full)
    assert (
        json.loads((cut / "summary.json").read_text())["final_eval"]
        == json.loads((full / "summary.json").read_text())["final_eval"]
    )


def test_resume_without_a_run_directory_is_a_clear_error(tiny_run_inputs, tmp_path):
    """--resume on a directory that does not exist exits non-zero with a message, not a traceback."""
    recipe = write_recipe(tmp_path / "r.toml", tiny_run_inputs)
    res = subprocess.run(
        _lmix("run", str(recipe), "--out", str(tmp_path / "nope"), "--resume"), capture_output=True, text=True
    )
    assert res.returncode != 0
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
