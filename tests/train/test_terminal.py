"""What ``lmix run`` prints, start to end, in one process and under a 2-process torchrun; strict-JSON run files.

Each run is a real subprocess with stderr not a terminal (as in a log file or a cluster job) and wandb offline.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmix_core.progress_bars import StepProgress
from lmix_core.train.logging import FlatRewards, batch_line

from .helpers import write_recipe

ROOT = Path(__file__).resolve().parents[2]


def strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _inputs(tiny_run_inputs: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """The shared tiny inputs, with a held-out file whose rows have no demonstration (so nll is undefined)."""
    rows = [json.loads(line) for line in tiny_run_inputs["eval"].read_text().splitlines()]
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({**r, "solution": None}) + "\n" for r in rows))
    return {**tiny_run_inputs, "eval": held}


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("WANDB_SILENT", None)
    return subprocess.run(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )


def _recipe(tiny_run_inputs: dict[str, Path], tmp_path: Path) -> Path:
    recipe = write_recipe(tmp_path / "r.toml", tiny_run_inputs, steps=2)
    recipe.write_text(
        recipe.read_text()
        .replace('wandb = "disabled"', 'wandb = "offline"')
        .replace("progress = false", "progress = true")
    )
    return recipe


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(("lmix", "wandb"))]


def test_one_process_prints_each_line_once_and_writes_strict_json(tiny_run_inputs, tmp_path):
    """Start line with the global batch, a wandb hint and no wandb banner, one progress line per step (no carriage
    returns), then evaluation, export and a done line timing the whole command; eval.jsonl and summary.json are
    strict JSON with nll null (no held-out demonstrations); every metric number is a float."""
    recipe = _recipe(_inputs(tiny_run_inputs, tmp_path), tmp_path)
    out = tmp_path / "run"
    proc = _run([sys.executable, "-m", "lmix", "run", str(recipe), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "\r" not in proc.stdout
    lines = _lines(proc.stdout)
    assert lines[0].startswith("lmix run: backend=hf")
    assert lines[1] == (
        "lmix run: 1 process x 2 prompts x 4 rollouts: global batch 2 prompts, 8 completions per step; 2 steps"
        f" -> {out}"
    )
    assert lines[2].startswith(
        f"lmix run: wandb logs offline; upload with: wandb sync {out}/wandb/offline-run-"
    )
    assert [ln.split("  ")[0] for ln in lines[3:5]] == ["lmix: step 1/2", "lmix: step 2/2"]
    assert lines[5:7] == [
        "lmix run: evaluating on 4 held-out questions (policy)",
        f"lmix run: writing the model to {out}/model",
    ]
    assert lines[7].startswith("lmix run: done in ") and lines[7].endswith(f" -> {out}")
    assert len(lines) == 8, lines  # nothing from wandb
    summary = strict_json((out / "summary.json").read_text())
    assert (
        float(lines[7].split()[4].rstrip("s;")) >= summary["wall_time_s"]
    )  # the whole command, loading included
    assert summary["final_eval"]["nll"] is None
    assert [strict_json(ln)["nll"] for ln in (out / "eval.jsonl").read_text().splitlines()] == [None]
    record = strict_json((out / "metrics.jsonl").read_text().splitlines()[0])
    assert type(record.pop("step")) is int and type(record.pop("skipped")) is bool
    assert type(record.pop("decision")) is str
    assert {k for k, v in record.items() if type(v) is not float} == set()


@pytest.mark.distributed
def test_two_processes_print_once_from_rank_0(tiny_run_inputs, tmp_path):
    """Under torchrun with 2 processes: the start line states 2 processes and the global batch (4 prompts, 16
    completions); every lmix line, and the data warning that every rank meets (a MATH row without a boxed answer),
    appear once; metrics.jsonl has the keys and types of a one-process run."""

    def as_math(source: Path, target: Path, extra: list[dict]) -> Path:
        rows = [json.loads(line) for line in source.read_text().splitlines()]
        rows = [{"problem": r["prompt"], "solution": r["solution"]} for r in rows] + extra
        target.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return target

    train = as_math(
        tiny_run_inputs["train"], tmp_path / "train.jsonl", [{"problem": "p", "solution": "no box"}]
    )
    held = as_math(tiny_run_inputs["eval"], tmp_path / "held.jsonl", [])
    recipe = _recipe({**tiny_run_inputs, "train": train, "eval": held}, tmp_path)
    recipe.write_text(recipe.read_text().replace("[data]\n", '[data]\nadapter = "math"\n'))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = _run([*cmd, "-m", "lmix", "run", str(recipe), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = _lines(proc.stdout)
    assert lines[1] == (
        "lmix run: 2 processes x 2 prompts x 4 rollouts: global batch 4 prompts, 16 completions per step; 2 steps"
        f" -> {out}"
    )
    assert len(lines) == len(set(lines)) == 8, lines
    assert proc.stdout.count("data.train: skipped 1 of 65 rows") == 1, proc.stdout
    record = strict_json((out / "metrics.jsonl").read_text().splitlines()[0])
    assert type(record.pop("step")) is int and type(record.pop("skipped")) is bool
    assert type(record.pop("decision")) is str
    assert {k for k, v in record.items() if type(v) is not float} == set()
    # lmix eval under torchrun: each rank samples its share; rank 0 prints the result once and writes every
    # rank's completions, one line per (question, sample), in order
    held_rows = len(held.read_text().splitlines())
    evaluated = _run(
        [
            *cmd,
            "-m",
            "lmix",
            "eval",
            str(out),
            "--samples",
            "2",
            "--completions",
            "c.jsonl",
            "--out",
            "e.json",
            "eval.max_examples=3",
        ],
        tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stdout[-3000:]
    assert evaluated.stdout.count('"pass@1"') == 1, evaluated.stdout
    records = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["n"] == 3 <= held_rows  # over both ranks, though their shards are unequal (2 and 1)
    assert [(r["index"], r["sample"]) for r in records] == [
        (i, s) for i in range(result["n"]) for s in range(2)
    ]
    assert result["pass@1"] == pytest.approx(sum(r["correct"] for r in records) / len(records))
    assert result["reward_mean"] == pytest.approx(sum(r["reward"] for r in records) / len(records))


def test_batch_line_counts_every_process() -> None:
    """prompts_per_step is per data-parallel replica: the global batch is replicas x prompts (x rollouts); the
    process count is stated too, and told apart from the replicas under tensor/pipeline parallelism."""

    class Train:
        prompts_per_step, group_size, steps = 8, 16, 100

    assert batch_line(Train, 4, 4) == (
        "4 processes x 8 prompts x 16 rollouts: global batch 32 prompts, 512 completions per step; 100 steps"
    )
    assert batch_line(Train, 2, 8) == (  # e.g. megatron with tp x pp = 4
        "8 processes = 2 data-parallel replicas x 8 prompts x 16 rollouts: global batch 16 prompts, 256 "
        "completions per step; 100 steps"
    )


def test_progress_without_a_terminal_writes_each_shown_step_once() -> None:
    """Off a terminal: whole lines, no carriage return; every step of a short run, at most MAX_LINES of a long one
    (always the first and last); a step without rollouts shows no reward."""
    stream = io.StringIO()
    progress = StepProgress(3, stream=stream)
    progress.update(0.5, 0.25)
    progress.update(0.4, None)
    progress.update(0.3, 1.0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [ln.split("  ")[:2] for ln in lines] == [
        ["lmix: step 1/3", "loss 0.5000"],
        ["lmix: step 2/3", "loss 0.4000"],
        ["lmix: step 3/3", "loss 0.3000"],
    ]
    assert [ln.split("  ")[2] for ln in lines[::2]] == ["reward 0.250", "reward 1.000"]
    assert "reward" not in lines[1] and "\r" not in stream.getvalue()
    long = io.StringIO()
    progress = StepProgress(1000, start=10, stream=long)
    for _ in range(990):
        progress.update(0.0, 0.0)
    steps = [int(ln.split()[2].split("/")[0]) for ln in long.getvalue().splitlines()]
    assert steps[0] == 11 and steps[-1] == 1000 and len(steps) <= StepProgress.MAX_LINES + 2
    assert steps[1:-1] == list(range(20, 1000, 10))


def test_flat_rewards_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    """STEPS RL steps in a row with one reward value warn once, with the causes; a varied step restarts the count;
    other processes stay silent."""
    watch = FlatRewards()
    zeros, mixed = torch.zeros(8), torch.tensor([0.0, 1.0])
    for step in range(FlatRewards.STEPS - 1):
        watch.observe(step, zeros, main=True)
    watch.observe(FlatRewards.STEPS - 1, mixed, main=True)
    assert not caplog.records
    for step in range(FlatRewards.STEPS):
        watch.observe(100 + step, torch.ones(8), main=True)
    for step in range(FlatRewards.STEPS):
        watch.observe(200 + step, torch.ones(8), main=True)
    (record,) = caplog.records
    assert record.getMessage().startswith(
        f"lmix run: every reward has been 1 for {FlatRewards.STEPS} steps in a row (through step 109)"
    )
    assert "lmix eval --completions FILE" in record.getMessage()
    other = FlatRewards()
    for step in range(FlatRewards.STEPS):
        other.observe(step, zeros, main=False)
    assert len(caplog.records) == 1
