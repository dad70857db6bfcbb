"""GRPO's group z-score advantage (DeepSeekMath, arXiv 2402.03300)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.advantages.grpo import GRPO
from lmix_core.config import build
from lmix_core.errors import ConfigError

from .helpers import batches, groups_of, make_inputs, row_values, with_rewards


def grpo(**kw) -> GRPO:
    return GRPO(build(GRPO.Config, kw))


def naive_grpo(rewards: list[float], group_ids: list[int], eps: float) -> list[float]:
    """verl's ``compute_grpo_outcome_advantage`` written as its loop: a lone sample gets mean 0 and std 1."""
    by_group: dict[int, list[float]] = {}
    for r, g in zip(rewards, group_ids):
        by_group.setdefault(g, []).append(r)
    out = []
    for r, g in zip(rewards, group_ids):
        scores = by_group[g]
        if len(scores) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(scores) / len(scores)
            std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1))
        out.append((r - mean) / (std + eps))
    return out


def test_by_hand():
    """Two groups, unbiased std, eps 1e-6, the advantage copied onto every response token."""
    inputs = make_inputs([1, 0, 0, 1, 0.5, 1.5, 1.0], [0, 0, 0, 0, 1, 1, 1], [2, 3, 1, 2, 2, 3, 1])
    adv = grpo()(inputs)
    # group 0: mean 0.5, unbiased var 4·0.25/3 = 1/3, std 0.5773503 → ±0.5/(0.5773503 + 1e-6) = ±0.8660239
    # group 1: mean 1.0, unbiased var (0.25 + 0.25 + 0)/2 = 0.25, std 0.5 → (−0.5, 0.5, 0)/0.500001 = ∓0.999998, 0
    expected = [0.8660239, -0.8660239, -0.8660239, 0.8660239, -0.999998, 0.999998, 0.0]
    torch.testing.assert_close(row_values(adv, inputs).float(), torch.tensor(expected), rtol=0, atol=1e-6)
    torch.testing.assert_close(adv[1], torch.tensor([-0.8660239, -0.8660239, -0.8660239]), rtol=0, atol=1e-6)
    assert adv[2, 1:].eq(0).all() and adv.dtype == torch.float32


def test_trl_eps_population_and_batch_scale_by_hand():
    """TRL's eps 1e-4, the population std and TRL's batch scaling are reachable through the Config."""
    inputs = make_inputs([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1], [1, 1, 1, 1])
    # group 0 has unbiased std sqrt(0.5) = 0.7071068: ±0.5/(0.7071068 + 1e-4) = ±0.7070068; group 1 is constant → 0
    torch.testing.assert_close(
        grpo(eps=1e-4)(inputs)[:, 0], torch.tensor([0.7070068, -0.7070068, 0.0, 0.0]), rtol=0, atol=1e-6
    )
    # population std of group 0 = 0.5: ±0.5/0.500001 = ±0.999998
    torch.testing.assert_close(
        grpo(std="population")(inputs)[:, 0], torch.tensor([0.999998, -0.999998, 0.0, 0.0]), rtol=0, atol=1e-6
    )
    # batch: centred by the group mean, divided by the std of all 4 rewards: mean 0.75, unbiased var 0.25, std 0.5
    torch.testing.assert_close(
        grpo(scale="batch")(inputs)[:, 0], torch.tensor([0.999998, -0.999998, 0.0, 0.0]), rtol=0, atol=1e-6
    )
    # none: Dr.GRPO's r − mean
    torch.testing.assert_close(
        grpo(scale="none")(inputs)[:, 0], torch.tensor([0.5, -0.5, 0.0, 0.0]), rtol=0, atol=0
    )


def test_singleton_convention():
    """A group of one valid reward: verl's mean 0, std 1 (→ r/(1+eps)) by default, or 0 with singleton='zero'."""
    inputs = make_inputs([0.8, 1.0, 0.0], [5, 6, 6])
    torch.testing.assert_close(grpo()(inputs)[0], torch.full((3,), 0.8 / (1 + 1e-6)), rtol=0, atol=1e-7)
    torch.testing.assert_close(grpo(scale="none")(inputs)[0], torch.full((3,), 0.8), rtol=0, atol=0)
    assert grpo(singleton="zero")(inputs)[0].eq(0).all()


def test_nan_rewards_are_excluded():
    """NaN rewards get 0 and take no part in the statistics; a group left with one valid reward is a singleton."""
    nan = float("nan")
    inputs = make_inputs([1.0, nan, 0.0, 1.0, nan, 0.5], [0, 0, 0, 0, 1, 1])
    clean = make_inputs([1.0, 0.0, 1.0, 0.5], [0, 0, 0, 1])
    adv, ref = grpo()(inputs), grpo()(clean)
    assert adv[[1, 4]].eq(0).all()
    torch.testing.assert_close(adv[[0, 2, 3, 5]], ref, rtol=0, atol=0)


@given(batches(nan=False))
def test_parity_with_naive_loop(inputs):
    """Matches verl's per-group loop (unbiased std, eps 1e-6, singleton mean 0 std 1) on random batches."""
    expected = torch.tensor(naive_grpo(inputs.rewards.tolist(), inputs.group_ids.tolist(), 1e-6))  # [N]
    expected = expected[:, None] * inputs.mask  # [N, S]
    torch.testing.assert_close(grpo()(inputs), expected.float(), rtol=1e-4, atol=1e-4)


@given(batches(min_group=2, min_len=1))
def test_sums_to_zero_per_group(inputs):
    """Σ_i Â_i = 0 within every group of >= 2 rollouts."""
    values = row_values(grpo()(inputs), inputs)
    for rows in groups_of(inputs).values():
        assert abs(float(values[rows].sum())) <= 1e-4 * len(rows)


@given(batches(min_group=1, min_len=1), st.floats(-3, 3), st.integers(0, 3))
def test_constant_group_is_zero(inputs, value, which):
    """A group whose rewards are all equal gets exactly 0 (for any group of >= 2)."""
    rows = list(groups_of(inputs).values())
    rows = rows[which % len(rows)]
    rewards = inputs.rewards.clone()
    rewards[rows] = value
    adv = grpo()(with_rewards(inputs, rewards))
    if len(rows) >= 2:
        assert adv[rows].eq(0).all()


@given(
    batches(min_group=2, grid=True), st.floats(0.1, 10), st.floats(-5, 5), st.sampled_from(["group", "batch"])
)
def test_affine_invariance(inputs, a, b, scale):
    """Â is unchanged by r → a·r + b (a > 0), up to eps, on groups of >= 2."""
    est = grpo(scale=scale)
    moved = with_rewards(inputs, a * inputs.rewards + b)
    torch.testing.assert_close(est(moved), est(inputs), rtol=1e-3, atol=1e-3)


def test_config_validation():
    """Unknown modes and a negative eps are Config errors."""
    with pytest.raises(ConfigError):
        build(GRPO.Config, {"std": "sample"})
    with pytest.raises(ConfigError):
        build(GRPO.Config, {"eps": -1e-6})
    with pytest.raises(ConfigError):
        build(GRPO.Config, {"scale": "global"})
