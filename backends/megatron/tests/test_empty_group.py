"""Two optimiser states under DP2 when a micro-batch group is empty (``parallel_average`` without SFT rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from megatron_launch import run_torchrun

pytestmark = [pytest.mark.megatron, pytest.mark.distributed]


def test_empty_group_takes_no_part_and_a_one_rank_group_does(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """No rank has SFT rows: θ ← θ̄ + Δ_RL at full weight and the SFT state never steps. Only rank 1 has them:
    the state is present on every rank and θ ← θ̄ + 0.3·Δ_RL + 0.7·Δ_SFT. Both against plain torch AdamW."""
    code, result, log, _ = run_torchrun(
        "empty_group_worker.py", {"policy": tiny_models["qwen2"]}, tmp_path, nproc=2
    )
    if code != 0 or result is None:
        pytest.fail(f"worker exited with {code}:\n{log[-6000:]}")
    absent, one_rank = result["absent"], result["one_rank"]
    assert absent["moved"] > 1e-4  # the step is not trivially small
    assert absent["weights"] <= 1e-5
    assert absent["optimizer_states"][1] == 0 < absent["optimizer_states"][0]
    assert one_rank["weights"] <= 1e-5
    assert one_rank["optimizer_states"][1] > 0
