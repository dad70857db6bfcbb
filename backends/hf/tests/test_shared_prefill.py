"""Shared prefill: one prompt pass per distinct prompt gives the tokens and log-probs of a pass per row."""

from __future__ import annotations

import functools

import pytest
import torch
from hf_helpers import load_plain, prompts

from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.types import GenerationRequest
from lmix_hf.sampler import Sampler


@pytest.mark.parametrize("decoder", ["fused", "transformers"])
@pytest.mark.parametrize("combined", [False, True], ids=["policy", "logit_average"])
def test_shared_prefill_gives_the_same_samples(model_dirs, tokenizer, decoder, combined):
    """Groups of 4 rows over 3 prompts of different lengths (a forced prefix in one row): same tokens, same
    log-probs (policy, mixture and reference) under the same seed; the prompt pass saw the 3 distinct prompts."""
    policy = load_plain(model_dirs["policy"])
    refs = [load_plain(model_dirs["reference"])] if combined else []
    mix = (
        functools.partial(LogitAverage(LogitAverage.Config(alpha=0.4)).mix_logits, step=0)
        if combined
        else None
    )
    ps = prompts(tokenizer, 3)
    rows = tuple(p for p in ps for _ in range(4))
    forced = tuple((100, 101) if i == 5 else () for i in range(len(rows)))
    request = GenerationRequest(prompt_ids=rows, forced=forced, max_new_tokens=10, temperature=0.9, seed=3)
    shapes: list[tuple[int, ...]] = []
    hook = policy.get_input_embeddings().register_forward_hook(
        lambda m, args, out: shapes.append(tuple(args[0].shape))
    )
    out = {
        prefill: Sampler(tokenizer, eos_token_ids=(), decoder=decoder, prefill=prefill).sample(
            request, policy, refs, mix
        )
        for prefill in ("shared", "per_row")
    }
    hook.remove()
    P = max(len(p) for p in ps)
    assert shapes[0] == (3, P) and (len(rows), P) in shapes  # shared: 3 distinct prompts; per_row: every row
    shared, per_row = out["shared"].generation, out["per_row"].generation
    assert torch.equal(shared.tokens.input_ids, per_row.tokens.input_ids)
    assert torch.equal(shared.tokens.loss_mask, per_row.tokens.loss_mask)
    torch.testing.assert_close(shared.logp, per_row.logp, rtol=0, atol=1e-6)
    if combined:
        torch.testing.assert_close(shared.ref_logp, per_row.ref_logp, rtol=0, atol=1e-6)
    # the groups' rows did not all sample the same tokens (they share keys and values, not draws)
    assert len({tuple(r) for r in shared.tokens.input_ids[:4].tolist()}) > 1
