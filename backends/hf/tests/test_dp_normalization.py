"""Data-parallel loss normalisation: 2 gloo ranks with unequal response lengths take the gradient of the global
batch in one process (``train.dp_normalization = "global"``), for every aggregation mode and the SFT token mean."""

from __future__ import annotations

import pytest
import torch
from dp_norm_worker import gradient_recorder, settings
from dp_scenario import global_step, run_step
from hf_helpers import make_backend
from hf_launch import torchrun_two_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_two_ranks_with_unequal_lengths_take_the_global_batch_gradient(model_dirs, tmp_path):
    """Each optimiser step's averaged gradient on 2 ranks equals the one-process gradient of the global minibatch
    within 1e-6 (fp32); per-rank normalisation (``rank``) does not."""
    torchrun_two_ranks("dp_norm_worker.py", model_dirs["policy"], tmp_path, timeout=300)
    ddp = torch.load(tmp_path / "grads.pt")

    single = make_backend(model_dirs["policy"], grad_clip=0.0, micro_batch_size=3)
    capture = gradient_recorder(single)
    data = global_step(single.tokenizer.pad_token_id or 0)
    for name, kw in settings().items():
        want = run_step(single, data, tmp_path / "single", capture, **{**kw, "dp_normalization": "global"})
        for k, (got, ref) in enumerate(zip(ddp[name], want, strict=True)):
            assert float(ref.abs().max()) > 1e-3, f"{name} step {k}: the gradient is too small to compare"
            err = float((got - ref).abs().max())
            if name.endswith("/rank"):
                assert err > 1e-3, f"{name} step {k}: per-rank normalisation should differ ({err:.2e})"
            else:
                assert err <= 1e-6, f"{name} step {k}: max |Δg| = {err:.2e}"
