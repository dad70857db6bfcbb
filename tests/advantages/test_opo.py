"""OPO's length-weighted baseline (arXiv 2505.23585)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.advantages.dr_grpo import DrGRPO
from lmix_core.advantages.opo import OPO
from lmix_core.config import build

from .helpers import batches, make_inputs, with_rewards


def naive_opo(rewards: list[float], group_ids: list[int], lengths: list[int]) -> list[float]:
    """verl's ``compute_opo_outcome_advantage`` loop: b = Σ|o| r / Σ|o|, a lone sample's baseline is 0."""
    out = []
    for r, g in zip(rewards, group_ids):
        members = [(s, n) for s, h, n in zip(rewards, group_ids, lengths) if h == g]
        if len(members) == 1:
            baseline = 0.0
        else:
            total = sum(n for _, n in members)
            baseline = (
                sum(s * n for s, n in members) / total if total else sum(s for s, _ in members) / len(members)
            )
        out.append(r - baseline)
    return out


def test_by_hand():
    """Rewards (1, 0) with lengths (1, 3): b = (1·1 + 3·0)/4 = 0.25 → (0.75, −0.25); Dr.GRPO would give ±0.5."""
    inputs = make_inputs([1.0, 0.0, 0.3], [0, 0, 1], [1, 3, 2])
    adv = OPO.default()(inputs)
    torch.testing.assert_close(adv[0], torch.tensor([0.75, 0.0, 0.0]), rtol=0, atol=1e-7)
    torch.testing.assert_close(adv[1], torch.tensor([-0.25, -0.25, -0.25]), rtol=0, atol=1e-7)
    torch.testing.assert_close(adv[2], torch.tensor([0.3, 0.3, 0.0]), rtol=0, atol=1e-7)  # lone: baseline 0
    assert OPO(build(OPO.Config, {"singleton": "zero"}))(inputs)[2].eq(0).all()


@given(batches())
def test_parity_with_naive_loop(inputs):
    """Matches verl's loop on random batches (empty responses included)."""
    lengths = inputs.mask.sum(-1).tolist()
    expected = torch.tensor(naive_opo(inputs.rewards.tolist(), inputs.group_ids.tolist(), lengths))
    torch.testing.assert_close(
        OPO.default()(inputs), (expected[:, None] * inputs.mask).float(), rtol=1e-5, atol=1e-5
    )


@given(batches(), st.integers(1, 5))
def test_equal_lengths_is_dr_grpo(inputs, length):
    """With equal response lengths the length-weighted baseline is the plain mean."""
    same = make_inputs(inputs.rewards.tolist(), inputs.group_ids.tolist(), [length] * inputs.rewards.shape[0])
    torch.testing.assert_close(OPO.default()(same), DrGRPO.default()(same), rtol=1e-5, atol=1e-6)


@given(batches(min_group=2), st.floats(-10, 10))
def test_shift_invariance(inputs, b):
    """A is unchanged by r → r + b on groups of >= 2."""
    est = OPO.default()
    torch.testing.assert_close(
        est(with_rewards(inputs, inputs.rewards + b)), est(inputs), rtol=1e-4, atol=1e-4
    )
