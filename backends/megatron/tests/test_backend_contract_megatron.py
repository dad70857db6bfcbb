"""The ``megatron`` backend passes the backend contract suite under torchrun on CPU (2 ranks, DP2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from megatron_launch import run_torchrun

from lmix_core.testing.backend import BACKEND_CHECKS

pytestmark = [pytest.mark.megatron, pytest.mark.distributed]


def test_megatron_backend_passes_the_contract(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Every check of ``check_backend`` passes on both ranks (a failure on any rank fails the job)."""
    code, result, log, _ = run_torchrun(
        "contract_worker.py",
        {"policy": tiny_models["qwen2"], "reference": tiny_models["qwen2_ref"]},
        tmp_path,
        nproc=2,
    )
    if code != 0 or result is None:
        pytest.fail(f"contract worker exited with {code}:\n{log[-6000:]}")
    assert result["passed"] == list(BACKEND_CHECKS)
