"""Batch-level advantage statistics under torchrun: 2 gloo ranks, each with whole groups, reduce them with the HF
backend's ``all_sum`` and get exactly the advantages of the whole batch in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dp_advantage_worker import ESTIMATORS, batch, estimate, rows

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_two_ranks_give_the_one_process_advantages(model_dirs, tmp_path):
    here = Path(__file__).parent
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{here}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(here / "dp_advantage_worker.py"), str(model_dirs["llama"]), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for label in ESTIMATORS:
        whole = estimate(label, batch())  # [N, S]
        split = torch.zeros_like(whole)
        for rank in range(2):
            split[rows(rank)] = parts[rank][label]
        assert torch.equal(split, whole), f"{label}: max |Δ| = {float((split - whole).abs().max()):.2e}"
