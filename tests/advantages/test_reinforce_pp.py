"""REINFORCE++'s globally whitened returns (arXiv 2501.03262)."""

from __future__ import annotations

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from lmix_core.advantages.dr_grpo import DrGRPO
from lmix_core.advantages.reinforce_pp import ReinforcePP
from lmix_core.config import build

from .helpers import batches, make_inputs, with_rewards


def rpp(**kw) -> ReinforcePP:
    return ReinforcePP(build(ReinforcePP.Config, kw))


def naive_reinforce_pp(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, eps: float = 1e-8
) -> torch.Tensor:
    """verl's loop: reward at the last response token, reversed running return reset by the mask, then
    ``masked_whiten`` with the Bessel-corrected variance."""
    n, s = mask.shape
    m = mask.double()
    token_rewards = torch.zeros(n, s, dtype=torch.float64)
    for i in range(n):
        idx = mask[i].nonzero()
        if len(idx):
            token_rewards[i, int(idx[-1])] = float(rewards[i])
    returns = torch.zeros(n, s, dtype=torch.float64)
    running = torch.zeros(n, dtype=torch.float64)
    for t in reversed(range(s)):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * m[:, t]
    count = m.sum()
    mean = (returns * m).sum() / count
    var = (((returns - mean) ** 2) * m).sum() / count * count / (count - 1)
    return ((returns - mean) / torch.sqrt(var + eps) * m).float()


def test_by_hand():
    """Rewards (1, 0) over 2 + 1 tokens: G = (1, 1 | 0); μ = 2/3, unbiased σ² = 1/3 → ±(1/3)/sqrt(1/3)."""
    inputs = make_inputs([1.0, 0.0], [0, 1], [2, 1])
    adv = ReinforcePP.default()(inputs)
    # (1 − 2/3)/sqrt(1/3) = 0.5773503 ; (0 − 2/3)/sqrt(1/3) = −1.1547005
    torch.testing.assert_close(
        adv, torch.tensor([[0.5773503, 0.5773503], [-1.1547005, 0.0]]), rtol=0, atol=1e-6
    )


def test_group_baseline_by_hand():
    """baseline='group': r − group mean first, then whitening: (1, 0) in one group → G = (0.5 | −0.5)."""
    inputs = make_inputs([1.0, 0.0], [0, 0], [1, 1])
    # μ = 0, unbiased σ² = (0.25 + 0.25)/1 = 0.5 → ±0.5/sqrt(0.5) = ±0.7071068
    torch.testing.assert_close(
        rpp(baseline="group")(inputs)[:, 0], torch.tensor([0.7071068, -0.7071068]), rtol=0, atol=1e-6
    )


def test_discount_by_hand():
    """γ = 0.5 over 3 tokens of reward 1 and 1 token of reward 0: G = (0.25, 0.5, 1 | 0)."""
    inputs = make_inputs([1.0, 0.0], [0, 1], [3, 1])
    g = torch.tensor([0.25, 0.5, 1.0, 0.0], dtype=torch.float64)
    expected = (g - g.mean()) / torch.sqrt(g.var(unbiased=True) + 1e-8)
    adv = rpp(gamma=0.5)(inputs)
    torch.testing.assert_close(adv[0], expected[:3].float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(adv[1, :1], expected[3:].float(), rtol=0, atol=1e-6)


@given(batches(), st.sampled_from([1.0, 0.9, 0.0]))
def test_parity_with_naive_loop(inputs, gamma):
    """Matches verl's loop (contiguous responses) for several γ."""
    assume(int(inputs.mask.sum()) >= 2)
    expected = naive_reinforce_pp(inputs.rewards, inputs.mask, gamma)
    torch.testing.assert_close(rpp(gamma=gamma)(inputs), expected, rtol=1e-4, atol=1e-4)


@given(batches(grid=True), st.sampled_from(["none", "group"]))
def test_whitened_statistics(inputs, baseline):
    """After whitening the batch's masked mean is 0 and its unbiased variance is σ²/(σ² + eps) ≈ 1."""
    values = rpp(baseline=baseline)(inputs).double()[inputs.mask]
    assume(values.numel() >= 2)
    # returns before whitening: r (or Dr.GRPO's r − group mean) on every response token
    per_token = DrGRPO.default()(inputs) if baseline == "group" else inputs.rewards[:, None] * inputs.mask
    sigma2 = float(per_token.double()[inputs.mask].var(unbiased=True))
    assert abs(float(values.mean())) < 1e-5
    assert abs(float(values.var(unbiased=True)) - sigma2 / (sigma2 + 1e-8)) < 1e-3


@given(batches(min_len=1))
def test_constant_along_each_response(inputs):
    """With γ = 1 the return is the same at every token of a response, and so is the whitened advantage."""
    adv = ReinforcePP.default()(inputs)
    for i in range(adv.shape[0]):
        row = adv[i][inputs.mask[i]]
        assert float(row.max() - row.min()) <= 1e-6


@given(batches(min_group=2, grid=True), st.floats(0.1, 10), st.floats(-5, 5))
def test_affine_invariance(inputs, a, b):
    """Whitening makes the output invariant to r → a·r + b (a > 0), up to eps."""
    est = ReinforcePP.default()
    moved = with_rewards(inputs, a * inputs.rewards + b)
    torch.testing.assert_close(est(moved), est(inputs), rtol=1e-3, atol=1e-3)


def test_nan_rewards_are_excluded():
    """NaN rows get 0 and leave the whitening statistics: same as dropping them."""
    inputs = make_inputs([1.0, float("nan"), 0.0, 0.5], [0, 0, 1, 1], [2, 3, 1, 2])
    clean = make_inputs([1.0, 0.0, 0.5], [0, 1, 1], [2, 1, 2], seq_len=3)
    adv = ReinforcePP.default()(inputs)
    assert adv[1].eq(0).all()
    torch.testing.assert_close(adv[[0, 2, 3]], ReinforcePP.default()(clean), rtol=0, atol=1e-6)


def test_too_few_tokens_gives_zero():
    """With a single scored token the variance is undefined: every advantage is 0 (verl raises instead)."""
    inputs = make_inputs([1.0, 0.0], [0, 1], [1, 0])
    assert ReinforcePP.default()(inputs).eq(0).all()
