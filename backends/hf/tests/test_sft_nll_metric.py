"""The SFT NLL metric is at the sampling temperature, and its name says so."""

from __future__ import annotations

import attrs
import pytest
import torch
from hf_helpers import load_plain, make_backend, prompts

from lmix_core.losses.ppo_clip import PPOClip
from lmix_core.mixers.sft import SFT
from lmix_core.train.objective import StepObjective
from lmix_core.types import GenerationRequest, MicroBatch

T = 0.5


def test_sft_nll_tempered_is_the_nll_under_softmax_of_logits_over_t(model_dirs, tokenizer):
    """An SFT micro-batch trained with the objective at T = 0.5 reports ``sft_nll_tempered`` = token mean of
    −log softmax(z/T)(y), from plain transformers logits; the T = 1 NLL is a different number."""
    backend = make_backend(model_dirs["policy"], micro_batch_size=8)
    gen = backend.generate(GenerationRequest(prompt_ids=prompts(tokenizer, 3), max_new_tokens=6, seed=1))
    tokens = attrs.evolve(gen.tokens, distribution="policy")
    m = tokens.loss_mask.float()  # [N, S]
    mb = MicroBatch(tokens=tokens, role="sft", tensors={"token_weights": m / m.sum()})
    objective = StepObjective(loss=PPOClip.default(), mixer=SFT.default(), temperature=T)

    model = load_plain(model_dirs["policy"])
    pos = (tokens.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        z = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, position_ids=pos).logits
    y = tokens.input_ids[:, 1:, None]  # [N, S-1, 1]
    mask = tokens.loss_mask[:, 1:].float()  # [N, S-1]

    def nll(temperature: float) -> float:
        lp = torch.log_softmax(z[:, :-1] / temperature, -1).gather(-1, y)[..., 0]  # [N, S-1]
        return float(-(lp * mask).sum() / mask.sum())

    report = backend.train_step([[mb]], objective, step=0)
    assert "sft_nll" not in report.metrics
    assert report.metrics["sft_nll_tempered"] == pytest.approx(nll(T), abs=1e-4)
    assert abs(nll(T) - nll(1.0)) > 1e-2
