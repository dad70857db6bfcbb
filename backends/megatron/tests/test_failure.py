"""A failure on one rank ends the whole torchrun job in bounded time, with that rank's message."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from megatron_launch import run_torchrun

pytestmark = [pytest.mark.megatron, pytest.mark.distributed]

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "megatron_tiny_tp2_pp2.toml"


def _seconds_after_start(out: Path) -> float:
    return time.time() - float((out / "started").read_text())


def test_raising_rank_ends_the_job_with_its_message(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Rank 2 raises mid-step while its peers sit in collectives: the job exits non-zero within seconds (torchrun
    stops the other workers) and the output carries rank 2's exception."""
    code, _, log, _ = run_torchrun(
        "failure_worker.py",
        {"policy": tiny_models["qwen2"], "mode": "raise", "timeout_s": 600},
        tmp_path,
        timeout=300,
    )
    assert code != 0
    assert "boom from rank 2: the objective failed" in log
    assert _seconds_after_start(tmp_path) < 60  # far below the 600 s process-group timeout


def test_hanging_rank_is_ended_by_the_process_group_timeout(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Rank 2 hangs mid-step: its peers' collectives time out after distributed_timeout_s (10 s) and the job ends."""
    code, _, log, _ = run_torchrun(
        "failure_worker.py",
        {"policy": tiny_models["qwen2"], "mode": "hang", "timeout_s": 10},
        tmp_path,
        timeout=300,
    )
    assert code != 0
    assert "imed out" in log or "timeout" in log.lower()
    assert _seconds_after_start(tmp_path) < 90


@pytest.mark.slow
def test_failing_rank_of_lmix_run_ends_the_job_with_its_traceback(tmp_path: Path) -> None:
    """`lmix run` under torchrun (the shipped TP2×PP2 recipe) where rank 2 raises in step 1: the job exits non-zero
    soon after, the output carries rank 2's message and traceback, and torchrun names it as the root cause (the
    CLI records the exception in torchrun's error file)."""
    from lmix_core.demo.command import build_inputs

    inputs = build_inputs(tmp_path / "inputs", 0)
    overrides = [
        f"backend.model={json.dumps(str(inputs['base']))}",
        f"data.train={json.dumps(str(inputs['train']))}",
        f"data.eval={json.dumps(str(inputs['eval']))}",
        "train.steps=3",
        "train.prompts_per_step=2",
        "train.group_size=4",
        "sampling.max_new_tokens=8",
        'logging.wandb="disabled"',
        "logging.progress=false",
    ]
    args = {"recipe": str(RECIPE), "overrides": overrides}
    # Once in about ten full-suite runs torchrun's closing summary was missing from the output although the job had
    # failed with rank 2's message and traceback; the cause was not found. The job is run a second time only then,
    # and the first log is kept in tmp_path for a look.
    for attempt in range(2):
        out = tmp_path / f"job{attempt}"
        code, _, log, _ = run_torchrun("cli_failure_worker.py", args, out, timeout=600)
        ended = time.time()
        (tmp_path / f"log{attempt}.txt").write_text(log)
        if "Root Cause" in log:
            break
    assert code != 0
    assert "RuntimeError: boom from rank 2 in step 1" in log
    assert "Traceback (most recent call last)" in log
    assert "Root Cause" in log, log[-3000:]
    root_cause = log[log.index("Root Cause") :]  # torchrun's summary, from rank 2's error file
    assert re.search(r"rank\s*:\s*2\b", root_cause)
    assert "RuntimeError: boom from rank 2 in step 1" in root_cause
    assert ended - float((out / "raised").read_text()) < 60  # far below the recipe's 600 s group timeout
