"""KL penalty in the reward (verl's use_kl_in_reward): r − β·Σ_t KL_t, with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lmix_core.ops.kl_reward import kl_penalised_rewards

LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]])  # [2, 3]
REF = torch.tensor([[-1.5, -1.0, -4.0], [-0.3, -1.7, 0.0]])  # [2, 3]
MASK = torch.tensor([[True, True, False], [True, True, False]])  # [2, 3]: the last column is padding
R = torch.tensor([1.0, 0.0])  # [2]
BETA = 0.1


@pytest.mark.parametrize(
    ("estimator", "row_kl"),
    [
        # k1 = logp − ref: row 0: 0.5 + (−1) ; row 1: 0 + 1
        ("k1", [-0.5, 1.0]),
        # k2 = ½ (logp − ref)²: row 0: ½(0.25 + 1) ; row 1: ½(0 + 1)
        ("k2", [0.625, 0.5]),
        # k3 = e^δ − δ − 1, δ = ref − logp: row 0: δ = −0.5, 1 ; row 1: δ = 0, −1
        ("k3", [math.exp(-0.5) + 0.5 - 1 + math.e - 2, 0.0 + math.exp(-1) + 1 - 1]),
    ],
)
def test_sequence_reward_minus_beta_times_summed_token_kl(estimator, row_kl):
    out = kl_penalised_rewards(R, LOGP, REF, MASK, coef=BETA, estimator=estimator)
    expected = torch.tensor([1.0 - BETA * row_kl[0], 0.0 - BETA * row_kl[1]])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_equals_verl_token_level_rewards_summed_by_an_outcome_estimator():
    """verl puts the score on the last response token, subtracts β·KL_t from every token's reward, and GRPO reads
    ``token_level_rewards.sum(-1)``: the same number as the sequence form."""
    kl = (LOGP - REF) * MASK  # [2, 3] verl kl_penalty="kl", masked
    scores = torch.zeros_like(LOGP)  # [2, 3]
    last = MASK.long().sum(-1) - 1  # [2]
    scores[torch.arange(2), last] = R
    token_rewards = scores - BETA * kl  # [2, 3]
    out = kl_penalised_rewards(R, LOGP, REF, MASK, coef=BETA, estimator="k1")
    torch.testing.assert_close(out, token_rewards.sum(-1), rtol=0, atol=1e-6)


def test_missing_reward_stays_missing_and_zero_coef_is_identity():
    r = torch.tensor([float("nan"), 2.0])
    out = kl_penalised_rewards(r, LOGP, REF, MASK, coef=BETA, estimator="k2")
    assert math.isnan(out[0]) and out[1] == pytest.approx(2.0 - BETA * 0.5)
    torch.testing.assert_close(kl_penalised_rewards(R, LOGP, REF, MASK, coef=0.0, estimator="k3"), R)


def test_no_gradient_flows_through_the_penalty():
    logp = LOGP.clone().requires_grad_(True)
    out = kl_penalised_rewards(R, logp, REF, MASK, coef=BETA, estimator="k3")
    assert not out.requires_grad
