"""Dr.GRPO's mean-only group advantage ("Understanding R1-Zero-Like Training: A Critical Perspective", arXiv 2503.20783)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.advantages.dr_grpo import DrGRPO
from lmix_core.advantages.grpo import GRPO
from lmix_core.config import build

from .helpers import batches, groups_of, make_inputs, row_values, with_rewards


def naive_dr_grpo(rewards: list[float], group_ids: list[int]) -> list[float]:
    """verl's loop with ``norm_adv_by_std_in_grpo=False``: r − group mean, a lone sample's mean is 0."""
    by_group: dict[int, list[float]] = {}
    for r, g in zip(rewards, group_ids):
        by_group.setdefault(g, []).append(r)
    return [
        r - (sum(by_group[g]) / len(by_group[g]) if len(by_group[g]) > 1 else 0.0)
        for r, g in zip(rewards, group_ids)
    ]


def test_by_hand():
    """Group [1, 0, 0, 0] → mean 0.25 → (0.75, −0.25, −0.25, −0.25); lone reward 0.4 passes through."""
    inputs = make_inputs([1, 0, 0, 0, 0.4], [3, 3, 3, 3, 9], [1, 2, 3, 1, 2])
    adv = DrGRPO.default()(inputs)
    torch.testing.assert_close(
        row_values(adv, inputs).float(), torch.tensor([0.75, -0.25, -0.25, -0.25, 0.4]), rtol=0, atol=1e-7
    )
    assert adv[0, 1:].eq(0).all()
    zero = DrGRPO(build(DrGRPO.Config, {"singleton": "zero"}))(inputs)
    assert zero[4].eq(0).all()


def test_nan_rewards_are_excluded():
    """A NaN reward gets 0 and leaves the group mean of the others."""
    inputs = make_inputs([1.0, float("nan"), 0.0], [0, 0, 0])
    torch.testing.assert_close(DrGRPO.default()(inputs)[:, 0], torch.tensor([0.5, 0.0, -0.5]), rtol=0, atol=0)


@given(batches())
def test_parity_with_naive_loop(inputs):
    """Matches verl's per-group loop on random batches."""
    expected = (
        torch.tensor(naive_dr_grpo(inputs.rewards.tolist(), inputs.group_ids.tolist()))[:, None] * inputs.mask
    )
    torch.testing.assert_close(DrGRPO.default()(inputs), expected.float(), rtol=1e-5, atol=1e-6)


@given(batches(min_group=2), st.floats(-10, 10))
def test_shift_invariance(inputs, b):
    """Â is unchanged by r → r + b on groups of >= 2."""
    est = DrGRPO.default()
    torch.testing.assert_close(
        est(with_rewards(inputs, inputs.rewards + b)), est(inputs), rtol=1e-4, atol=1e-5
    )


@given(batches(min_group=2, min_len=1))
def test_sums_to_zero_per_group(inputs):
    """Σ_i Â_i = 0 within every group."""
    values = row_values(DrGRPO.default()(inputs), inputs)
    for rows in groups_of(inputs).values():
        assert abs(float(values[rows].sum())) <= 1e-5 * len(rows)


@given(batches(nan=True))
def test_equals_grpo_without_std(inputs):
    """Dr.GRPO is GRPO with scale='none' (verl norm_adv_by_std_in_grpo=False, TRL scale_rewards='none')."""
    torch.testing.assert_close(
        DrGRPO.default()(inputs), GRPO(build(GRPO.Config, {"scale": "none"}))(inputs), rtol=0, atol=0
    )
