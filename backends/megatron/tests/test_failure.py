"""A failure on one rank ends the whole torchrun job in bounded time, with that rank's message."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from megatron_launch import run_torchrun

pytestmark = [pytest.mark.megatron, pytest.mark.distributed]


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
