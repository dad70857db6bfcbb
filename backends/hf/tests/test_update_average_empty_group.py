"""Two optimiser states with one group empty this step: the other update at full weight, the idle state untouched."""

from __future__ import annotations

import attrs
import torch
from hf_helpers import WeightedNLL, load_plain, make_backend, micro_batch, prompts

from lmix_core.types import GenerationRequest


def test_empty_sft_group_applies_the_rl_update_at_full_weight(model_dirs, tokenizer):
    """update_weights (0.3, 0.7) and no SFT micro-batch: θ ← θ̄ + Δ_RL, exactly one naive AdamW step on the RL
    group (not 0.3 of it), and the SFT state's moments and step count stay empty."""
    backend = make_backend(
        model_dirs["policy"],
        lr=1e-2,
        num_optimizer_states=2,
        update_weights=(0.3, 0.7),
        weight_decay=0.1,
        grad_clip=0.0,
        adam_eps=1.0,
    )
    gen = backend.generate(GenerationRequest(prompt_ids=prompts(tokenizer, 2), max_new_tokens=8, seed=0))
    tokens = attrs.evolve(gen.tokens, distribution="policy")
    backend.train_step([[micro_batch(tokens)], []], WeightedNLL(), step=0)

    model = load_plain(model_dirs["policy"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-2, eps=1.0
    )
    pos = (tokens.attention_mask.cumsum(-1) - 1).clamp(min=0)
    z = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, position_ids=pos).logits
    lp = torch.log_softmax(z[:, :-1], -1).gather(-1, tokens.input_ids[:, 1:, None])[..., 0]  # [N, S-1]
    w = (tokens.loss_mask.float() / tokens.loss_mask.sum())[:, 1:]  # [N, S-1]
    (-(lp * w).sum()).backward()
    opt.step()
    expected = dict(model.named_parameters())
    for name, p in backend.policy.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name].detach(), rtol=0, atol=1e-5, msg=name)
    assert backend._optimizers[0].state and not backend._optimizers[1].state
