"""The pure-SFT mixer."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.mixers.sft import SFT
from lmix_core.types import StepPlan

from .helpers import inputs


@given(step=st.integers(0, 10_000))
def test_sft_never_samples(step):
    """Every step: no rollouts, SFT only."""
    assert SFT.default().plan(step) == StepPlan(rollouts=False, sft=True)


def test_sft_trains_on_each_question_demonstration_with_weight_one():
    """sft lists the step's questions with weight 1; no RL term."""
    d = SFT.default().mix(inputs(2, None, qids=(7, 3, 9)))
    assert (d.rl_coef, d.sft_coef, d.rl_weights, d.label) == (0.0, 1.0, (0.0, 0.0, 0.0), "sft")
    assert d.sft == ((7, 1.0), (3, 1.0), (9, 1.0))


def test_sft_token_weights_are_ones():
    """Plain NLL: every token weight is 1."""
    logp = torch.tensor([[-0.1, -2.0], [0.0, -5.0]])  # [N, S]
    torch.testing.assert_close(SFT.default().sft_token_weights(logp), torch.ones(2, 2), atol=0, rtol=0)
