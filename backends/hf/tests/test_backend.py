"""HFBackend: construction, scoring, training steps, optimiser states, checkpoints and export."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
import transformers
from hf_helpers import WeightedNLL, load_plain, make_backend, micro_batch, naive_logp, prompts, right_to_left

from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.config import build
from lmix_core.errors import BackendError, ConfigError
from lmix_core.registries import backends
from lmix_core.types import GenerationRequest
from lmix_hf.backend import HFBackend

ATOL = 1e-5


def rollouts(backend, tokenizer, n=4, seed=0, max_new_tokens=8):
    return backend.generate(
        GenerationRequest(prompt_ids=prompts(tokenizer, n), max_new_tokens=max_new_tokens, seed=seed)
    )


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_params_close(a, b, atol=ATOL):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def naive_adamw(model, *, lr, weight_decay, eps=1.0):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        eps=eps,
    )


def naive_loss(model, tokens, weights, *, ref=None, combiner=None, entropy_coef=0.0, kl_coef=0.0):
    """The weighted NLL (+ entropy and KL terms) of WeightedNLL with full logits from plain transformers."""
    pos = (tokens.attention_mask.cumsum(-1) - 1).clamp(min=0)
    z = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, position_ids=pos).logits
    if combiner is not None:
        with torch.no_grad():
            z_ref = ref(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, position_ids=pos
            ).logits
        z = combiner.mix_logits(z, [z_ref])
    logq = torch.log_softmax(z[:, :-1], -1)
    lp = logq.gather(-1, tokens.input_ids[:, 1:, None])[..., 0]
    w = weights[:, 1:]
    loss = -(lp * w).sum()
    if entropy_coef:
        loss = loss + entropy_coef * (-(logq.exp() * logq).sum(-1) * w).sum()
    if kl_coef:
        with torch.no_grad():
            ref_lp = naive_logp(ref, tokens)[:, 1:]
        loss = loss + kl_coef * ((lp - ref_lp) * w).sum()
    return loss


# -- construction ----------------------------------------------------------------------------------------------
def test_registered_as_hf():
    """The backend registry resolves ``hf`` to HFBackend through the entry point."""
    assert backends.get("hf") is HFBackend


def test_missing_model_directory_says_how_to_get_one(tmp_path):
    """A model path that does not exist fails with a BackendError naming the path and the fix."""
    with pytest.raises(
        BackendError, match=r"model directory '.*nowhere' not found; build one with `lmix demo`"
    ):
        make_backend(tmp_path / "nowhere")


def test_unset_model_fails_loudly():
    """The default Config (no model) cannot build a backend."""
    with pytest.raises(BackendError, match="backend.model is not set"):
        make_backend("")


def test_combiner_needing_more_references_than_loaded(model_dirs):
    """A combiner with a reference and a context loading none is refused at construction."""
    with pytest.raises(BackendError, match="mixes 1 reference"):
        make_backend(model_dirs["policy"], combiner=LogitAverage(LogitAverage.Config()), num_references=0)


def test_config_validation_collects_problems():
    """Config structuring rejects bad values with the field named, and a decaying schedule needs total_steps."""
    with pytest.raises(ConfigError, match="betas"):
        build(HFBackend.Config, {"betas": [0.9, 1.5]})
    with pytest.raises(ConfigError, match="lr_schedule"):
        build(HFBackend.Config, {"lr_schedule": "exp"})
    with pytest.raises(ConfigError, match="total_steps"):
        build(HFBackend.Config, {"lr_schedule": "cosine", "warmup_steps": 5, "total_steps": 5})
    cfg = build(HFBackend.Config, {"lr_schedule": "linear", "total_steps": 10, "betas": [0.8, 0.9]})
    assert cfg.betas == (0.8, 0.9)


def test_references_default_to_the_initial_model(model_dirs, tokenizer):
    """With no reference directory configured, the reference is a frozen copy of the initial policy: before any
    step its log-probs equal the policy's; after a step they stay where they were."""
    backend = make_backend(model_dirs["policy"], num_references=1, lr=1e-2)
    gen = rollouts(backend, tokenizer)
    before = backend.score(gen.tokens, ref_logp=True)
    torch.testing.assert_close(before.ref_logp, before.logp, rtol=0, atol=ATOL)
    assert all(not p.requires_grad for p in backend.references[0].parameters())
    backend.train_step([[micro_batch(gen.tokens)]], WeightedNLL(), step=0)
    after = backend.score(gen.tokens, ref_logp=True)
    torch.testing.assert_close(after.ref_logp, before.ref_logp, rtol=0, atol=0)
    assert (after.logp - before.logp).abs().max() > 1e-3


# -- scoring ---------------------------------------------------------------------------------------------------
def test_score_is_padding_side_invariant(model_dirs, tokenizer):
    """The same rows right-padded and left-padded get the same log-probs and entropies (realigned)."""
    backend = make_backend(model_dirs["policy"])
    gen = rollouts(backend, tokenizer, n=4, max_new_tokens=6)
    right = backend.score(gen.tokens, entropy=True)
    left_tokens = right_to_left(gen.tokens)
    left = backend.score(left_tokens, entropy=True)
    torch.testing.assert_close(
        left.logp[left_tokens.loss_mask], right.logp[gen.tokens.loss_mask], rtol=0, atol=ATOL
    )
    torch.testing.assert_close(
        left.entropy[left_tokens.loss_mask], right.entropy[gen.tokens.loss_mask], rtol=0, atol=ATOL
    )


def test_score_matches_naive_full_logits(model_dirs, tokenizer):
    """logp, entropy and ref_logp equal full-logits computations with plain transformers, at temperature 0.8
    (scored in chunks of 3 rows)."""
    backend = make_backend(
        model_dirs["policy"], references=(model_dirs["reference"],), num_references=1, micro_batch_size=3
    )
    tokens = rollouts(backend, tokenizer).tokens
    stats = backend.score(tokens, temperature=0.8, entropy=True, ref_logp=True)
    policy, ref = load_plain(model_dirs["policy"]), load_plain(model_dirs["reference"])
    with torch.no_grad():
        torch.testing.assert_close(stats.logp, naive_logp(policy, tokens, 0.8), rtol=0, atol=ATOL)
        torch.testing.assert_close(stats.ref_logp, naive_logp(ref, tokens, 0.8), rtol=0, atol=ATOL)
        pos = (tokens.attention_mask.cumsum(-1) - 1).clamp(min=0)
        z = (
            policy(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, position_ids=pos).logits
            / 0.8
        )
        logq = torch.log_softmax(z[:, :-1], -1)
        ent = torch.cat([torch.zeros(len(z), 1), -(logq.exp() * logq).sum(-1)], 1) * tokens.loss_mask
    torch.testing.assert_close(stats.entropy, ent, rtol=0, atol=ATOL)


def test_score_without_reference_refuses_ref_logp(model_dirs, tokenizer):
    """Asking for ref_logp from a backend that loaded no reference is an error."""
    backend = make_backend(model_dirs["policy"])
    with pytest.raises(BackendError, match="no reference"):
        backend.score(rollouts(backend, tokenizer).tokens, ref_logp=True)


# -- training --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case",
    [
        {"objective": {}},
        {"objective": {"needs_entropy": True, "entropy_coef": 0.1, "needs_ref_logp": True, "kl_coef": 0.5}},
        {"objective": {}, "combined": True},
        {"objective": {}, "grad_clip": 1e-3},
    ],
    ids=["nll", "entropy_kl", "combined", "clipped"],
)
def test_train_step_matches_naive_adamw(model_dirs, tokenizer, case):
    """One step (2 micro-batches of 2 rows, chunked log-probs) equals AdamW on the naive full-logits loss: same
    loss, same pre-clip gradient norm, same parameters."""
    combined = case.get("combined", False)
    combiner = LogitAverage(LogitAverage.Config(alpha=0.6)) if combined else None
    # a large ε makes AdamW's first step ≈ lr·g (well conditioned); at ε = 1e-8 it is lr·sign(g), and gradient
    # entries that are 0 up to rounding would flip signs between two correct implementations
    grad_clip, eps = case.get("grad_clip", 0.0), 1.0
    backend = make_backend(
        model_dirs["policy"],
        combiner=combiner,
        references=(model_dirs["reference"],),
        num_references=1,
        lr=1e-2,
        weight_decay=0.1,
        grad_clip=grad_clip,
        adam_eps=eps,
        micro_batch_size=2,
        logprob_chunk_size=7,
    )
    gen = rollouts(backend, tokenizer, n=4)
    tokens = gen.tokens if combined else attrs.evolve(gen.tokens, distribution="policy")
    weights = tokens.loss_mask.float() / tokens.loss_mask.sum()
    objective = WeightedNLL(**case["objective"])
    report = backend.train_step([[micro_batch(tokens, weights)]], objective, step=0)

    model, ref = load_plain(model_dirs["policy"]), load_plain(model_dirs["reference"])
    opt = naive_adamw(model, lr=1e-2, weight_decay=0.1, eps=eps)
    loss = naive_loss(
        model,
        tokens,
        weights,
        ref=ref,
        combiner=combiner,
        entropy_coef=case["objective"].get("entropy_coef", 0.0),
        kl_coef=case["objective"].get("kl_coef", 0.0),
    )
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    opt.step()
    assert not report.skipped
    assert report.loss == pytest.approx(float(loss), abs=ATOL)
    assert report.grad_norms == pytest.approx((float(norm),), rel=1e-4)
    assert_params_close(params(backend.policy), params(model))


def test_micro_batch_size_does_not_change_the_step(model_dirs, tokenizer):
    """Splitting the same rows into 1-row or 4-row forward passes gives the same loss, norm and parameters."""
    results = []
    for size in (1, 4):
        backend = make_backend(model_dirs["policy"], lr=1e-2, micro_batch_size=size, adam_eps=1.0)
        gen = rollouts(backend, tokenizer, n=4)
        report = backend.train_step([[micro_batch(gen.tokens)]], WeightedNLL(), step=0)
        results.append((report, params(backend.policy)))
    (r1, p1), (r4, p4) = results
    assert r1.loss == pytest.approx(r4.loss, abs=ATOL)
    assert r1.grad_norms == pytest.approx(r4.grad_norms, rel=1e-4)
    assert_params_close(p1, p4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_skips_and_changes_nothing(model_dirs, tokenizer, bad):
    """A non-finite loss reports skipped, leaves parameters and optimiser state untouched, and the next step is
    the step a fresh backend would take."""
    backend = make_backend(model_dirs["policy"], lr=1e-2)
    gen = rollouts(backend, tokenizer)
    before = params(backend.policy)
    report = backend.train_step([[micro_batch(gen.tokens)]], WeightedNLL(scale=bad), step=0)
    assert report.skipped
    assert_params_close(params(backend.policy), before, atol=0)
    assert all(p.grad is None for p in backend.policy.parameters())
    assert not backend._optimizers[0].state
    backend.train_step([[micro_batch(gen.tokens)]], WeightedNLL(), step=0)
    fresh = make_backend(model_dirs["policy"], lr=1e-2)
    fresh.train_step([[micro_batch(gen.tokens)]], WeightedNLL(), step=0)
    assert_params_close(params(backend.policy), params(fresh.policy), atol=0)


def test_two_optimizer_states_average_updates(model_dirs, tokenizer):
    """With two optimiser states, θ ← θ̄ + w₀Δ₀ + w₁Δ₁ where Δ_k is AdamW state k's step on group k's gradient,
    both from θ̄ (checked against two naive AdamW runs)."""
    w = (0.3, 0.7)
    backend = make_backend(
        model_dirs["policy"],
        lr=1e-2,
        num_optimizer_states=2,
        update_weights=w,
        weight_decay=0.1,
        grad_clip=0.0,
        adam_eps=1.0,
    )
    gen = rollouts(backend, tokenizer, n=4)
    tokens = attrs.evolve(gen.tokens, distribution="policy")
    a, b = tokens.select(slice(0, 2)), tokens.select(slice(2, 4))
    report = backend.train_step([[micro_batch(a)], [micro_batch(b)]], WeightedNLL(), step=0)
    expected: dict[str, torch.Tensor] = {}
    norms = []
    for k, part in enumerate((a, b)):
        model = load_plain(model_dirs["policy"])
        opt = naive_adamw(model, lr=1e-2, weight_decay=0.1)
        naive_loss(model, part, part.loss_mask.float() / part.loss_mask.sum()).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)))
        opt.step()
        for name, p in params(model).items():
            expected[name] = expected.get(name, 0) + w[k] * p
    assert report.grad_norms == pytest.approx(tuple(norms), rel=1e-4)
    assert_params_close(params(backend.policy), expected)


def test_wrong_number_of_groups_fails(model_dirs, tokenizer):
    """train_step needs one micro-batch group per optimiser state."""
    backend = make_backend(model_dirs["policy"])
    gen = rollouts(backend, tokenizer, n=2)
    with pytest.raises(BackendError, match="group"):
        backend.train_step([[micro_batch(gen.tokens)], []], WeightedNLL(), step=0)


def test_gradient_checkpointing_gives_the_same_step(model_dirs, tokenizer):
    """Recomputing activations in backward changes memory, not the result."""
    out = []
    for recompute in ("none", "full"):
        backend = make_backend(model_dirs["policy"], lr=1e-2, recompute=recompute, adam_eps=1.0)
        gen = rollouts(backend, tokenizer)
        backend.train_step([[micro_batch(gen.tokens)]], WeightedNLL(), step=0)
        out.append(params(backend.policy))
    assert_params_close(out[0], out[1])


def test_bfloat16_step_runs(model_dirs, tokenizer):
    """A bf16 backend samples, scores and steps: finite loss, bf16 parameters that changed."""
    backend = make_backend(model_dirs["policy"], dtype="bfloat16", lr=1e-2)
    gen = rollouts(backend, tokenizer)
    before = params(backend.policy)
    report = backend.train_step([[micro_batch(gen.tokens)]], WeightedNLL(), step=0)
    assert not report.skipped and math.isfinite(report.loss)
    assert next(backend.policy.parameters()).dtype == torch.bfloat16
    assert any((before[k] != v).any() for k, v in params(backend.policy).items())
    assert backend.score(gen.tokens).logp.dtype == torch.float32


def test_learning_rate_follows_the_schedule(model_dirs, tokenizer):
    """The optimiser's learning rate at each step is lr_at(step): warm-up 2 steps, then cosine to 0 at step 6."""
    backend = make_backend(model_dirs["policy"], lr=1e-2, lr_schedule="cosine", warmup_steps=2, total_steps=6)
    gen = rollouts(backend, tokenizer, n=2)
    seen = []
    for step in range(7):
        backend.train_step([[micro_batch(gen.tokens)]], WeightedNLL(), step=step)
        seen.append(backend._optimizers[0].param_groups[0]["lr"])
    # warm-up 0.005, 0.01; cosine over 4 steps: 0.01·(1+cos(πp))/2 for p = 0, 1/4, 1/2, 3/4, 1
    expected = [0.005, 0.01, 0.01, 0.0085355339, 0.005, 0.0014644661, 0.0]
    assert seen == pytest.approx(expected, abs=1e-9)


# -- persistence -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("states", [1, 2])
def test_checkpoint_resume_reproduces_next_step_exactly(model_dirs, tokenizer, tmp_path, states):
    """Save after step 0, load into a fresh backend, take step 1: bit-identical to the uninterrupted run's step 1,
    RNG included."""
    kw = dict(lr=1e-2, num_optimizer_states=states, update_weights=(1.0,) if states == 1 else (0.5, 0.5))
    gen = rollouts(make_backend(model_dirs["policy"]), tokenizer)
    groups = [[micro_batch(gen.tokens)]] * states

    first = make_backend(model_dirs["policy"], **kw)
    first.train_step(groups, WeightedNLL(), step=0)
    first.save_checkpoint(tmp_path / "ckpt")
    rng_after_save = torch.rand(3)
    report = first.train_step(groups, WeightedNLL(), step=1)

    second = make_backend(model_dirs["policy"], **kw)
    torch.manual_seed(1234)  # disturb the global RNG: loading must restore it
    second.load_checkpoint(tmp_path / "ckpt")
    torch.testing.assert_close(torch.rand(3), rng_after_save, rtol=0, atol=0)
    resumed = second.train_step(groups, WeightedNLL(), step=1)
    assert resumed == report
    assert_params_close(params(second.policy), params(first.policy), atol=0)


def test_checkpoint_with_other_state_count_is_refused(model_dirs, tokenizer, tmp_path):
    """Loading a one-state checkpoint into a two-state backend fails with a clear message."""
    make_backend(model_dirs["policy"]).save_checkpoint(tmp_path / "ckpt")
    two = make_backend(model_dirs["policy"], num_optimizer_states=2, update_weights=(0.5, 0.5))
    with pytest.raises(BackendError, match="optimiser state"):
        two.load_checkpoint(tmp_path / "ckpt")


def test_save_pretrained_loads_with_plain_transformers(model_dirs, tokenizer, tmp_path):
    """The exported directory loads with AutoModelForCausalLM/AutoTokenizer and reproduces the trained policy's
    log-probs and the chat template."""
    backend = make_backend(model_dirs["policy"], lr=1e-2)
    gen = rollouts(backend, tokenizer)
    backend.train_step([[micro_batch(gen.tokens)]], WeightedNLL(), step=0)
    backend.save_pretrained(tmp_path / "final")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "final")
    assert tok.chat_template == tokenizer.chat_template
    with torch.no_grad():
        torch.testing.assert_close(
            naive_logp(model, gen.tokens), backend.score(gen.tokens).logp, rtol=0, atol=ATOL
        )


def test_generate_combined_with_policy_combiner_equals_policy(model_dirs, tokenizer):
    """With the ``policy`` combiner, ``combined`` and ``policy`` distributions sample the same tokens."""
    backend = make_backend(model_dirs["policy"])
    ps = prompts(tokenizer, 3)
    a = backend.generate(GenerationRequest(prompt_ids=ps, max_new_tokens=6, seed=9, distribution="combined"))
    b = backend.generate(GenerationRequest(prompt_ids=ps, max_new_tokens=6, seed=9, distribution="policy"))
    torch.testing.assert_close(a.tokens.input_ids, b.tokens.input_ids, rtol=0, atol=0)
    assert a.completions == b.completions
