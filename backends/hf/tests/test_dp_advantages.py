"""Batch-level advantage statistics under torchrun: 2 gloo ranks, each with whole groups, reduce them with the HF
backend's ``all_sum`` and get exactly the advantages of the whole batch in one process."""

from __future__ import annotations

import pytest
import torch
from dp_advantage_worker import ESTIMATORS, batch, estimate, rows
from hf_launch import torchrun_two_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_two_ranks_give_the_one_process_advantages(model_dirs, tmp_path):
    torchrun_two_ranks("dp_advantage_worker.py", model_dirs["llama"], tmp_path, timeout=300)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for label in ESTIMATORS:
        whole = estimate(label, batch())  # [N, S]
        split = torch.zeros_like(whole)
        for rank in range(2):
            split[rows(rank)] = parts[rank][label]
        assert torch.equal(split, whole), f"{label}: max |Δ| = {float((split - whole).abs().max()):.2e}"
