"""FSDP2 and DDP on CPU (gloo): two ranks under torchrun take the steps of one process on the union of their rows.

One torchrun launch per mode (fsdp_worker.py) runs the whole scenario; the test replays it in one process with the
replicated backend and compares.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from fsdp_scenario import STEPS, backend, rollouts, train
from hf_launch import torchrun_two_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module", params=["fsdp", "ddp"])
def launched(request, model_dirs, tmp_path_factory):
    """``backend.parallel`` (the param) and the worker's output directory after one 2-process launch."""
    out = tmp_path_factory.mktemp(request.param)
    torchrun_two_ranks("fsdp_worker.py", model_dirs["policy"], model_dirs["reference"], out, request.param)
    return request.param, out


@pytest.fixture(scope="module")
def single(model_dirs):
    """The replicated backend in one process after the scenario's steps on both ranks' rows (weights halved)."""
    b = backend(model_dirs["policy"], model_dirs["reference"])
    tokens = rollouts(b)
    reports = train(b, tokens, (0, 1), 0.5, range(STEPS))
    return b, tokens, reports


def test_two_ranks_equal_one_process(launched, single):
    """Five steps of logit averaging with two optimiser states, a KL term, unequal chunk counts and an empty group
    on one rank (padding passes): the losses and both states' gradient norms match one process within 1e-5, and
    the exported weights (an ordinary HF directory that transformers loads) match its parameters within 1e-5."""
    _, launched = launched
    b, tokens, reports = single
    result = json.loads((launched / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["tokens"] == tokens.input_ids.tolist()  # FSDP samples from gathered full weights
    assert len(result["reports"]) == STEPS
    for got, want in zip(result["reports"], reports, strict=True):
        assert not got["skipped"]
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)
        assert got["grad_norms"] == pytest.approx(want["grad_norms"], abs=1e-5)
    exported = transformers.AutoModelForCausalLM.from_pretrained(launched / "model")
    want = dict(b.policy.named_parameters())
    for name, p in exported.named_parameters():
        torch.testing.assert_close(p.detach(), want[name].detach(), rtol=0, atol=1e-5, msg=name)
    assert (launched / "model" / "tokenizer.json").is_file()


def test_parameters_and_references_are_sharded(launched):
    """FSDP: each rank holds half of every policy and reference parameter (a DTensor shard along dim 0); DDP: the
    whole tensors."""
    parallel, launched = launched
    local = json.loads((launched / "result.json").read_text())["local"]
    assert {k.split(".")[0] for k in local} == {"policy", "reference"}
    for name, (kind, full, shard) in local.items():
        if parallel == "ddp":
            assert kind == "Parameter" and shard == full, name
            continue
        assert kind == "DTensor", name
        assert shard[0] == (full[0] + 1) // 2 and shard[1:] == full[1:], name


def test_checkpoint_resumes_exactly(launched):
    """Under FSDP the checkpoint is one DCP directory (a shard file per rank, rank 0's metadata) plus each rank's
    RNG (DDP: whole model and optimiser files); a new backend that loads it takes steps 4 and 5 exactly as the
    uninterrupted run did, and exports the same model."""
    parallel, launched = launched
    ckpt = launched / "ckpt"
    rng = ["rng_rank0.pt", "rng_rank1.pt"]
    if parallel == "fsdp":
        assert sorted(p.name for p in ckpt.iterdir()) == ["backend.json", *rng, "sharded"]
        shards = sorted(p.name for p in (ckpt / "sharded").iterdir())
        assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    else:
        files = ["backend.json", "model.pt", "optimizer_0.pt", "optimizer_1.pt", *rng]
        assert sorted(p.name for p in ckpt.iterdir()) == files
    info = json.loads((ckpt / "backend.json").read_text())
    assert info["sharded"] is (parallel == "fsdp") and info["optimizer_states"] == 2
    result = json.loads((launched / "result.json").read_text())
    assert result["resumed"] == result["reports"][3:]
    a = transformers.AutoModelForCausalLM.from_pretrained(launched / "model").state_dict()
    c = transformers.AutoModelForCausalLM.from_pretrained(launched / "model_resumed").state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_score_with_unequal_passes(launched, single):
    """score() on 3 rows (rank 0) and 1 row (rank 1) equals one process's scores of the 4 rows, after training."""
    _, launched = launched
    b, tokens, _ = single
    got = torch.load(launched / "scored.pt")
    want = b.score(tokens, entropy=True, ref_logp=True)
    torch.testing.assert_close(got["logp"], want.logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["entropy"], want.entropy, rtol=0, atol=1e-5)


def test_one_rank_fsdp_recompute_and_bf16_mixed_precision(model_dirs, tmp_path):
    """In one process (a one-rank group): FSDP with ``recompute = "full"`` takes the replicated backend's steps
    exactly; with ``dtype = "bfloat16"`` the sharded master weights stay float32, the first step's loss is the
    pure-bf16 run's (same bf16 weights at step 0) and the export is written in bfloat16."""
    policy, reference = model_dirs["policy"], model_dirs["reference"]
    runs = {}
    for name, kw in {
        "fsdp_recompute": {"parallel": "fsdp", "recompute": "full"},
        "ddp": {},
        "fsdp_bf16": {"parallel": "fsdp", "dtype": "bfloat16"},
        "ddp_bf16": {"dtype": "bfloat16"},
    }.items():
        b = backend(policy, reference, **kw)
        try:
            tokens = rollouts(b)
            runs[name] = train(b, tokens, (0, 1), 0.5, range(2))
            if name == "fsdp_bf16":
                assert {p.dtype for p in b.policy.parameters()} == {torch.float32}
                b.save_pretrained(tmp_path / "bf16")
        finally:
            b.close()
    for got, want in zip(runs["fsdp_recompute"], runs["ddp"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
        assert got["grad_norms"] == pytest.approx(want["grad_norms"], abs=1e-6)
    assert runs["fsdp_bf16"][0]["loss"] == pytest.approx(runs["ddp_bf16"][0]["loss"], abs=1e-6)
    assert runs["fsdp_bf16"][1]["loss"] != runs["ddp_bf16"][1]["loss"]  # float32 master weights after a step
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert {p.dtype for p in exported.parameters()} == {torch.bfloat16}
