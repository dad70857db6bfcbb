"""Shared-prompt training forward: each repeated context forwarded once per group, same statistics and gradients."""

from __future__ import annotations

import attrs
import pytest
import torch
from hf_helpers import WeightedNLL, load_plain, make_backend, micro_batch, prompts, right_to_left

from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.types import GenerationRequest, TokenBatch
from lmix_hf.token_stats import shared_prompts, shares_exactly, token_stats

TOL = 1e-6


def grouped_rollouts(model_dirs, tokenizer, *, G=3, seed=0) -> TokenBatch:
    """Rows ``q·G + g``: 3 prompts of different lengths, G rollouts each (responses of different lengths)."""
    backend = make_backend(model_dirs["policy"])
    ps = prompts(tokenizer, 3)
    request = GenerationRequest(
        prompt_ids=tuple(p for p in ps for _ in range(G)), max_new_tokens=9, seed=seed
    )
    tokens = backend.generate(request).tokens
    assert len(set(tokens.attention_mask.sum(-1).tolist())) > 2  # ragged rows: right padding is exercised
    return tokens


def stats_and_grads(model, tokens, *, shared, refs=(), mix=None):
    """logp, entropy and the gradient of the token mean of (logp + 0.3·entropy) · w for every policy parameter."""
    model.zero_grad(set_to_none=True)
    stats = token_stats(
        tokens,
        policy=model,
        mix_refs=refs,
        mix=mix,
        kl_ref=refs[0] if refs else None,
        temperature=0.7,
        entropy=True,
        chunk_size=5,
        device=torch.device("cpu"),
        shared_prompt=shared,
    )
    w = torch.linspace(0.5, 1.5, tokens.input_ids.numel()).view_as(stats.logp)  # [N, S]
    w = w / tokens.loss_mask.sum()  # [N, S] a token mean, as the loop's weights
    ((stats.logp + 0.3 * stats.entropy) * w).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return stats, grads


def count_forwarded(model):
    """Record the ``[rows, columns]`` shape of every embedding call."""
    shapes: list[tuple[int, int]] = []
    model.get_input_embeddings().register_forward_hook(
        lambda m, args, out: shapes.append(tuple(args[0].shape))
    )
    return shapes


@pytest.mark.parametrize("combined", [False, True], ids=["policy", "logit_average"])
def test_shared_forward_equals_ordinary_forward(model_dirs, tokenizer, combined):
    """logp, entropy, the reference's logp and every parameter gradient agree to 1e-6 (fp32), for the policy alone
    and for logit_average's mixed log-probs, in training mode; the context pass ran once per distinct prompt."""
    tokens = grouped_rollouts(model_dirs, tokenizer)
    model = load_plain(model_dirs["policy"]).train()
    ref = load_plain(model_dirs["reference"]) if combined else None
    refs = (ref,) if combined else ()
    mix = LogitAverage(LogitAverage.Config(alpha=0.6)).mix_logits if combined else None
    if mix is not None:
        mix_step = mix

        def mix(z, zs):  # noqa: ANN001, ANN202
            return mix_step(z, zs, step=0)

    plain, g_plain = stats_and_grads(model, tokens, shared=False, refs=refs, mix=mix)
    shapes = count_forwarded(model)
    shared, g_shared = stats_and_grads(model, tokens, shared=True, refs=refs, mix=mix)
    N = tokens.num_rows
    assert shapes[0][0] == 3 and shapes[1][0] == N  # 3 distinct contexts, then every row's continuation
    (U, P), (_, C) = shapes[0], shapes[1]
    assert U * P + N * C < 0.6 * tokens.input_ids.numel()  # forwarded token positions
    for name in ("logp", "entropy", "ref_logp"):
        a, b = getattr(plain, name), getattr(shared, name)
        if a is None:
            assert b is None
            continue
        torch.testing.assert_close(b, a, rtol=0, atol=TOL, msg=name)
    for k in g_plain:
        torch.testing.assert_close(g_shared[k], g_plain[k], rtol=0, atol=TOL, msg=k)


def test_any_row_order_padding_and_unscored_rows(model_dirs, tokenizer):
    """Shuffled rows, left padding and a row with nothing scored still group by context and agree with the
    ordinary forward."""
    tokens = grouped_rollouts(model_dirs, tokenizer, seed=1)
    order = torch.randperm(tokens.num_rows, generator=torch.Generator().manual_seed(0))
    tokens = right_to_left(tokens.select(order))
    loss_mask = tokens.loss_mask.clone()
    loss_mask[2] = False
    tokens = attrs.evolve(tokens, loss_mask=loss_mask)
    model = load_plain(model_dirs["policy"]).train()
    layout = shared_prompts(tokens.input_ids, tokens.attention_mask, tokens.loss_mask)
    assert layout is not None and int(layout.group[2]) == -1 and layout.context_ids.shape[0] == 3
    plain, g_plain = stats_and_grads(model, tokens, shared=False)
    shared, g_shared = stats_and_grads(model, tokens, shared=True)
    torch.testing.assert_close(shared.logp, plain.logp, rtol=0, atol=TOL)
    for k in g_plain:
        torch.testing.assert_close(g_shared[k], g_plain[k], rtol=0, atol=TOL, msg=k)


def test_no_repeated_context_forwards_ordinarily(model_dirs, tokenizer):
    """Distinct prompts give no shared layout (nothing to save)."""
    backend = make_backend(model_dirs["policy"])
    tokens = backend.generate(GenerationRequest(prompt_ids=prompts(tokenizer, 3), max_new_tokens=4)).tokens
    assert shared_prompts(tokens.input_ids, tokens.attention_mask, tokens.loss_mask) is None


def test_inexact_cases_are_not_shared(model_dirs):
    """Training-mode dropout or gradient checkpointing keep the ordinary forward; eval mode always shares."""
    model = load_plain(model_dirs["policy"])
    assert shares_exactly(model.train())
    model.config.attention_dropout = 0.1
    assert not shares_exactly(model.train()) and shares_exactly(model.eval())
    model.config.attention_dropout = 0.0
    model.activation_checkpointing_enable({"use_reentrant": False})
    assert not shares_exactly(model.train())


def test_train_step_with_groups_split_over_chunks(model_dirs, tokenizer):
    """A backend step with ``shared_prompt = "auto"`` equals ``"off"`` when micro-batches of 4 rows split the
    groups of 3: same loss, gradient norm and parameters."""
    tokens = grouped_rollouts(model_dirs, tokenizer)
    results = []
    for mode in ("auto", "off"):
        backend = make_backend(
            model_dirs["policy"], lr=1e-2, adam_eps=1.0, micro_batch_size=4, shared_prompt=mode
        )
        report = backend.train_step([[micro_batch(tokens)]], WeightedNLL(), step=0)
        results.append((report, {k: p.detach().clone() for k, p in backend.policy.named_parameters()}))
    (ra, pa), (ro, po) = results
    assert ra.loss == pytest.approx(ro.loss, abs=TOL)
    assert ra.grad_norms == pytest.approx(ro.grad_norms, rel=1e-5)
    for k in po:
        torch.testing.assert_close(pa[k], po[k], rtol=0, atol=TOL, msg=k)
