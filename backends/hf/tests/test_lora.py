"""LoRA policies: the adapter-free reference, lockstep mixed sampling, checkpoints and exports (lmix_hf.lora)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
from ddp_worker import shard_batches
from hf_helpers import WeightedNLL, load_plain, make_backend, micro_batch, naive_logp, prompts

from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.errors import BackendError
from lmix_core.train.checkpoint import read_torch
from lmix_core.types import GenerationRequest
from lmix_hf.fused_decoder import FusedDecoder

ATOL = 1e-5


def lora_backend(model, **kw):
    kw.setdefault("combiner", LogitAverage(LogitAverage.Config(alpha=0.5)))
    kw.setdefault("num_references", 1)
    return make_backend(model, lora_rank=4, lora_alpha=8.0, **kw)


def full_backend(model, **kw):
    kw.setdefault("combiner", LogitAverage(LogitAverage.Config(alpha=0.5)))
    kw.setdefault("num_references", 1)
    return make_backend(model, **kw)


def perturb_adapters(backend, seed=0):
    """Give every adapter a non-zero ``B`` (at initialisation ``B = 0`` and the policy is the starting model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backend.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def request(tokenizer, seed=5, n=4, max_new_tokens=8, distribution="combined"):
    return GenerationRequest(
        prompt_ids=prompts(tokenizer, n), max_new_tokens=max_new_tokens, seed=seed, distribution=distribution
    )


def test_adapter_free_reference_gives_exactly_the_starting_models_logits(model_dirs, tokenizer):
    """With non-zero adapters, the reference's logits equal (bit for bit) those of the starting model loaded by plain
    transformers and those of peft's own ``disable_adapter()``; the policy's differ."""
    backend = lora_backend(model_dirs["policy"])
    perturb_adapters(backend)
    (ref,) = backend.references
    plain = load_plain(model_dirs["policy"])
    ids = torch.tensor([list(prompts(tokenizer, 1)[0])])  # [1, S]
    lora = backend._lora
    with torch.no_grad():
        z_ref = ref(input_ids=ids).logits  # [1, S, V]
        z_plain = plain(input_ids=ids).logits  # [1, S, V]
        with lora.peft_model.disable_adapter():
            z_peft_off = backend.policy(input_ids=ids).logits  # [1, S, V]
        z_policy = backend.policy(input_ids=ids).logits  # [1, S, V]
    assert torch.equal(z_ref, z_plain)
    assert torch.equal(z_ref, z_peft_off)
    assert (z_policy - z_ref).abs().max() > 1e-2


def test_reference_shares_the_policys_weights(model_dirs):
    """One copy of the weights: every tensor of the reference is a tensor of the policy; only adapters train."""
    backend = lora_backend(model_dirs["policy"])
    (ref,) = backend.references
    policy_tensors = {t.data_ptr() for t in [*backend.policy.parameters(), *backend.policy.buffers()]}
    assert {t.data_ptr() for t in [*ref.parameters(), *ref.buffers()]} <= policy_tensors
    trainable = [n for n, p in backend.policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    assert FusedDecoder.supports(
        ref
    )  # plain nn.Linear layers: the sampler's fused decoder runs the reference


def test_mixed_sampling_at_start_matches_two_separate_models(model_dirs, tokenizer):
    """At initialisation (B = 0) the LoRA policy and its adapter-free reference sample the combined distribution
    exactly like a fully loaded policy and a separately loaded reference: same seed, same tokens, same log-probs."""
    a = lora_backend(model_dirs["policy"]).sample(request(tokenizer)).generation
    b = full_backend(model_dirs["policy"]).sample(request(tokenizer)).generation
    assert torch.equal(a.tokens.input_ids, b.tokens.input_ids)
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=ATOL)
    torch.testing.assert_close(a.ref_logp, b.ref_logp, rtol=0, atol=ATOL)


def test_mixed_sampling_after_an_update_matches_merged_policy_and_separate_reference(
    model_dirs, tokenizer, tmp_path
):
    """After a training step, LoRA sampling in lockstep (policy with adapters, reference without) draws from the
    same distribution as two separate models: the merged export as the policy and the starting model as the
    reference. Same seed, same tokens; same sampler and scorer log-probs."""
    lora = lora_backend(model_dirs["policy"], lr=5e-2)
    gen = lora.generate(request(tokenizer, seed=1))
    before = lora.score(gen.tokens).logp
    report = lora.train_step([[micro_batch(gen.tokens)]], WeightedNLL(), step=0)
    assert not report.skipped
    after = lora.score(gen.tokens).logp
    assert (after - before).abs().max() > 1e-2  # the update moved the policy
    lora.save_pretrained(tmp_path / "merged")
    full = full_backend(tmp_path / "merged", references=(model_dirs["policy"],))

    a = lora.sample(request(tokenizer, seed=7)).generation
    b = full.sample(request(tokenizer, seed=7)).generation
    assert torch.equal(a.tokens.input_ids, b.tokens.input_ids)
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=ATOL)
    torch.testing.assert_close(a.ref_logp, b.ref_logp, rtol=0, atol=ATOL)
    sa, sb = lora.score(a.tokens, ref_logp=True), full.score(a.tokens, ref_logp=True)
    torch.testing.assert_close(sa.logp, sb.logp, rtol=0, atol=ATOL)
    torch.testing.assert_close(sa.ref_logp, sb.ref_logp, rtol=0, atol=0)
    torch.testing.assert_close(sa.logp, a.logp, rtol=0, atol=ATOL)  # the scorer agrees with the sampler


def test_checkpoint_holds_the_adapters_and_resume_is_exact(model_dirs, tokenizer, tmp_path):
    """model.pt holds the adapter weights only; loading it and the optimiser state into a fresh LoRA backend makes
    the next step bit-identical to the uninterrupted run's."""
    kw = dict(lr=1e-2)
    gen = lora_backend(model_dirs["policy"]).generate(request(tokenizer, seed=0))
    groups = [[micro_batch(gen.tokens)]]

    first = lora_backend(model_dirs["policy"], **kw)
    first.train_step(groups, WeightedNLL(), step=0)
    first.save_checkpoint(tmp_path / "ckpt")
    report = first.train_step(groups, WeightedNLL(), step=1)

    saved = read_torch(tmp_path / "ckpt" / "model.pt")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    second = lora_backend(model_dirs["policy"], **kw)
    second.load_checkpoint(tmp_path / "ckpt")
    assert second.train_step(groups, WeightedNLL(), step=1) == report
    for (name, p), q in zip(first.policy.named_parameters(), second.policy.parameters()):
        assert torch.equal(p, q), name


def test_full_checkpoint_is_refused_by_a_lora_run(model_dirs, tmp_path):
    make_backend(model_dirs["policy"]).save_checkpoint(tmp_path / "ckpt")
    with pytest.raises(BackendError, match="lora_rank"):
        lora_backend(model_dirs["policy"]).load_checkpoint(tmp_path / "ckpt")


def test_checkpoint_of_another_lora_scale_is_refused(model_dirs, tmp_path):
    lora_backend(model_dirs["policy"]).save_checkpoint(tmp_path / "ckpt")
    other = make_backend(model_dirs["policy"], lora_rank=4, lora_alpha=16.0)
    with pytest.raises(BackendError, match="lora_alpha"):
        other.load_checkpoint(tmp_path / "ckpt")


def test_adapter_export_loads_with_peft(model_dirs, tokenizer, tmp_path):
    """``lora_export = "adapter"`` writes peft's adapter directory; peft loads it over the starting model and
    reproduces the policy's log-probs."""
    backend = lora_backend(model_dirs["policy"], lora_export="adapter")
    perturb_adapters(backend)
    backend.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    model = peft.PeftModel.from_pretrained(load_plain(model_dirs["policy"]), tmp_path / "adapter").eval()
    gen = backend.generate(request(tokenizer, seed=3, n=2, distribution="policy"))
    with torch.no_grad():
        expected = naive_logp(model, gen.tokens)
    torch.testing.assert_close(backend.score(gen.tokens).logp, expected, rtol=0, atol=ATOL)


def test_target_modules_choose_the_adapted_layers(model_dirs):
    backend = make_backend(model_dirs["policy"], lora_rank=2, lora_target_modules=("q_proj", "v_proj"))
    names = backend._lora.adapted_modules
    assert names and {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "v_proj"}


@pytest.mark.parametrize(
    ("targets", "match"), [(("lm_head",), "LM head"), (("no_such_layer",), "lora_target_modules")]
)
def test_bad_target_modules_fail_loudly(model_dirs, targets, match):
    with pytest.raises(BackendError, match=match):
        make_backend(model_dirs["policy"], lora_rank=2, lora_target_modules=targets)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ddp_ranks_train_the_adapters_like_one_process_on_the_union(model_dirs, tmp_path):
    """2 gloo ranks (each with half the rows) end with identical adapters, equal to one process stepping on both
    halves with weights halved (within 1e-5); the KL term reads the adapter-free reference on every rank."""
    here = Path(__file__).parent
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{here}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(here / "lora_ddp_worker.py"), str(model_dirs["policy"]), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    adapters = [torch.load(tmp_path / f"adapters{r}.pt") for r in range(2)]
    assert reports[0] == reports[1]
    for name in adapters[0]:
        assert torch.equal(adapters[0][name], adapters[1][name]), name

    single = lora_backend(model_dirs["policy"], lr=1e-2, adam_eps=1.0, micro_batch_size=1)
    halves = [shard_batches(single, r) for r in range(2)]
    halves = [
        type(mb)(tokens=mb.tokens, role=mb.role, tensors={"weights": mb.tensors["weights"] / 2})
        for mb in halves
    ]
    objective = WeightedNLL(needs_ref_logp=True, kl_coef=0.3)
    want = [single.train_step([halves], objective, step=s) for s in range(2)]
    for got, w in zip(reports[0], want):
        assert not got["skipped"] and got["loss"] == pytest.approx(w.loss, abs=1e-5)
        assert got["grad_norms"] == pytest.approx(list(w.grad_norms), rel=1e-4)
    trained = {k: v.detach() for k, v in single.policy.named_parameters() if v.requires_grad}
    assert trained.keys() == adapters[0].keys()
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)
    for name, p in trained.items():
        torch.testing.assert_close(adapters[0][name], p, rtol=0, atol=1e-5, msg=name)
