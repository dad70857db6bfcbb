"""Data parallelism: two CPU processes under torchrun take the same steps as one process on the union."""

from __future__ import annotations

import json

import pytest
import torch
from ddp_worker import shard_batches
from hf_helpers import WeightedNLL, make_backend
from hf_launch import torchrun_two_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_two_cpu_ranks_equal_one_process_on_the_union(model_dirs, tmp_path):
    """2 gloo ranks (each with half the rows, weights normalised per rank) reach the parameters, losses and
    gradient norms of one process stepping on both halves with weights halved, within 1e-5."""
    torchrun_two_ranks("ddp_worker.py", model_dirs["policy"], tmp_path)
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["rank"] for i in infos] == [0, 1] and all(i["world_size"] == 2 for i in infos)
    assert [i["is_main"] for i in infos] == [True, False]
    assert infos[0]["means"] == pytest.approx({"rank": 0.5, "one": 1.0})
    assert infos[0]["reports"] == infos[1]["reports"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "backend.json", "model.pt", "optimizer_0.pt", "rng_rank0.pt", "rng_rank1.pt",
    ]  # fmt: skip

    single = make_backend(model_dirs["policy"], num_references=1, lr=1e-2, adam_eps=1.0, micro_batch_size=1)
    halves = [shard_batches(single, r) for r in range(2)]
    halves = [
        type(mb)(tokens=mb.tokens, role=mb.role, tensors={"weights": mb.tensors["weights"] / 2})
        for mb in halves
    ]
    objective = WeightedNLL(needs_ref_logp=True, kl_coef=0.3)
    reports = [single.train_step([halves], objective, step=s) for s in range(2)]
    for got, want in zip(infos[0]["reports"], reports):
        assert got["loss"] == pytest.approx(want.loss, abs=1e-5)
        assert got["grad_norms"] == pytest.approx(list(want.grad_norms), rel=1e-4)
    ddp_params = torch.load(tmp_path / "params.pt")
    for name, p in single.policy.named_parameters():
        torch.testing.assert_close(ddp_params[name], p.detach(), rtol=0, atol=1e-5, msg=name)
