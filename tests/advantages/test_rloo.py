"""RLOO's leave-one-out baseline ("Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs", arXiv 2402.14740)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.advantages.dr_grpo import DrGRPO
from lmix_core.advantages.rloo import RLOO
from lmix_core.config import build

from .helpers import batches, groups_of, make_inputs, row_values, with_rewards


def naive_rloo(rewards: list[float], group_ids: list[int]) -> list[float]:
    """TRL's form: baseline_i = (Σ_group − r_i)/(n − 1); a lone sample gets 0 (lmix's default)."""
    out = []
    for r, g in zip(rewards, group_ids):
        others = [s for s, h in zip(rewards, group_ids) if h == g]
        n = len(others)
        out.append(0.0 if n == 1 else r - (sum(others) - r) / (n - 1))
    return out


def test_by_hand():
    """Group [1, 0, 0]: baselines 0, 0.5, 0.5 → (1, −0.5, −0.5) = 3/2·(r − 1/3)."""
    inputs = make_inputs([1, 0, 0, 0.7], [1, 1, 1, 2])
    adv = RLOO.default()(inputs)
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.0, -0.5, -0.5, 0.0]), rtol=0, atol=1e-7)
    raw = RLOO(build(RLOO.Config, {"singleton": "raw"}))(inputs)  # verl leaves a lone reward unchanged
    torch.testing.assert_close(raw[3], torch.full((3,), 0.7), rtol=0, atol=0)


@given(batches())
def test_parity_with_naive_loop(inputs):
    """Matches the leave-one-out loop on random batches."""
    expected = (
        torch.tensor(naive_rloo(inputs.rewards.tolist(), inputs.group_ids.tolist()))[:, None] * inputs.mask
    )
    torch.testing.assert_close(RLOO.default()(inputs), expected.float(), rtol=1e-5, atol=1e-5)


@given(batches(min_group=2))
def test_is_scaled_dr_grpo(inputs):
    """RLOO = n/(n−1) · Dr.GRPO on groups of n >= 2."""
    n = torch.tensor(
        [len(groups_of(inputs)[g]) for g in inputs.group_ids.tolist()], dtype=torch.float32
    )  # [N]
    expected = DrGRPO.default()(inputs) * (n / (n - 1))[:, None]
    torch.testing.assert_close(RLOO.default()(inputs), expected, rtol=1e-5, atol=1e-6)


@given(batches(min_group=2, min_len=1), st.integers(0, 100), st.integers(0, 100), st.floats(-2, 2))
def test_baseline_excludes_own_reward(inputs, i_pick, j_pick, delta):
    """Changing r_i by δ changes A_i by δ; changing r_j (same group, j ≠ i) changes A_i by −δ/(n−1)."""
    est = RLOO.default()
    i = i_pick % inputs.rewards.shape[0]
    rows = groups_of(inputs)[int(inputs.group_ids[i])]
    n = len(rows)
    others = [r for r in rows if r != i]
    j = others[j_pick % len(others)]
    base = row_values(est(inputs), inputs)
    bump_i = inputs.rewards.clone()
    bump_i[i] += delta
    bump_j = inputs.rewards.clone()
    bump_j[j] += delta
    assert abs(float(row_values(est(with_rewards(inputs, bump_i)), inputs)[i] - base[i]) - delta) < 1e-5
    assert (
        abs(float(row_values(est(with_rewards(inputs, bump_j)), inputs)[i] - base[i]) + delta / (n - 1))
        < 1e-5
    )


@given(batches(min_group=2, min_len=1))
def test_sums_to_zero_per_group(inputs):
    """Σ_i A_i = 0 within every group."""
    values = row_values(RLOO.default()(inputs), inputs)
    for rows in groups_of(inputs).values():
        assert abs(float(values[rows].sum())) <= 1e-5 * len(rows)


@given(batches(min_group=2), st.floats(-10, 10))
def test_shift_invariance(inputs, b):
    """A is unchanged by r → r + b."""
    est = RLOO.default()
    torch.testing.assert_close(
        est(with_rewards(inputs, inputs.rewards + b)), est(inputs), rtol=1e-4, atol=1e-5
    )


def test_nan_shrinks_the_group():
    """A NaN reward gets 0 and the others use n = number of valid rewards: [1, NaN, 0] → n = 2 → (1, 0, −1)."""
    inputs = make_inputs([1.0, float("nan"), 0.0], [0, 0, 0])
    torch.testing.assert_close(RLOO.default()(inputs)[:, 0], torch.tensor([1.0, 0.0, -1.0]), rtol=0, atol=0)
