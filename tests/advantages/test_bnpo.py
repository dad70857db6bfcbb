"""BNPO's Beta-normalised advantage (arXiv 2506.02864; official ``compute_bnpo_outcome_advantage``)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.advantages.bnpo import BNPO, beta_parameters, inverse_beta_pdf
from lmix_core.advantages.grpo import GRPO
from lmix_core.config import build
from lmix_core.errors import ConfigError, LmixError

from .helpers import batches, groups_of, make_inputs, row_values


def bnpo(**kw) -> BNPO:
    return BNPO(build(BNPO.Config, kw))


def naive_bnpo(rewards: list[float], group_ids: list[int]) -> list[float]:
    """The official loop for groups of >= 2: p per question, unbiased moments over questions, α/β, 1/pdf clamped;
    the density from ``torch.distributions.Beta`` as the official code does."""
    by_group: dict[int, list[float]] = {}
    for r, g in zip(rewards, group_ids):
        by_group.setdefault(g, []).append(r)
    p = {g: sum(v) / len(v) for g, v in by_group.items()}
    all_p = torch.tensor(list(p.values()), dtype=torch.float64)
    mean, var = (all_p.mean(), all_p.var()) if len(all_p) > 1 else (torch.tensor(0.0), torch.tensor(1.0))
    if float(var) == 0:  # degenerate fit: lmix's documented fallback α = β = 1
        alpha = beta = torch.tensor(1.0, dtype=torch.float64)
    else:
        alpha = torch.clamp(1 + (mean * (1 - mean) / var - 1) * mean / 3, min=1.0)
        beta = torch.clamp(1 + (mean * (1 - mean) / var - 1) * (1 - mean) / 3, min=1.0)
    out = []
    for r, g in zip(rewards, group_ids):
        density = (
            torch.distributions.Beta(alpha, beta).log_prob(torch.tensor(p[g], dtype=torch.float64)).exp()
        )
        out.append(float(torch.clamp(1 / density, min=0, max=1e6)) * (r - p[g]))
    return out


def test_by_hand():
    """Questions with p = 0.5 and 0.25: μ = 0.375, σ² = 0.03125 → k = 6.5, α = 1.8125, β = 2.3541667."""
    inputs = make_inputs([1, 1, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1])
    # k = μ(1−μ)/σ² − 1 = 0.234375/0.03125 − 1 = 6.5 ; a = 6.5·0.375 = 2.4375 ; b = 6.5·0.625 = 4.0625
    # α = 1 + a/3 = 1.8125 ; β = 1 + b/3 = 2.3541667 ; B(α, β) = Γ(α)Γ(β)/Γ(α+β) = 0.1518324
    # pdf(0.5) = 0.5^0.8125 · 0.5^1.3541667 / B = 1.4669116 → 1/pdf = 0.6817043 → A = ±0.5·0.6817043 = ±0.3408522
    # pdf(0.25) = 0.25^0.8125 · 0.75^1.3541667 / B = 1.4463519 → 1/pdf = 0.6913947 → A = 0.75·…, −0.25·…
    expected = [0.3408522, 0.3408522, -0.3408522, -0.3408522, 0.5185460, -0.1728487, -0.1728487, -0.1728487]
    torch.testing.assert_close(BNPO.default()(inputs)[:, 0], torch.tensor(expected), rtol=0, atol=1e-6)


def test_reward_range_scaling():
    """Rewards in [−1, 1] with reward_min = −1 map to [0, 1] first: same advantages as the 0/1 rewards."""
    inputs = make_inputs([1, -1, -1, 1, -1, -1], [0, 0, 0, 1, 1, 1])
    same = make_inputs([1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1])
    torch.testing.assert_close(bnpo(reward_min=-1.0)(inputs), BNPO.default()(same), rtol=0, atol=1e-7)


def test_out_of_range_rewards():
    """A reward outside [reward_min, reward_max] raises by default and is clamped with out_of_range='clamp'."""
    inputs = make_inputs([1.5, 0.0, 1.0, 0.0], [0, 0, 1, 1])
    with pytest.raises(LmixError, match="reward_min"):
        BNPO.default()(inputs)
    clamped = make_inputs([1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1])
    torch.testing.assert_close(bnpo(out_of_range="clamp")(inputs), BNPO.default()(clamped), rtol=0, atol=0)


def test_config_cross_check():
    """reward_max must exceed reward_min."""
    with pytest.raises(ConfigError):
        build(BNPO.Config, {"reward_min": 1.0, "reward_max": 1.0})


def test_single_question_is_reinforce():
    """One question: the official μ = 0, σ² = 1 gives α = β = 1, pdf ≡ 1, so A = R − p (REINFORCE + mean)."""
    inputs = make_inputs([1, 0, 0, 0.5], [4, 4, 4, 4])
    torch.testing.assert_close(
        BNPO.default()(inputs)[:, 0], torch.tensor([0.625, -0.375, -0.375, 0.125]), rtol=0, atol=1e-7
    )


def test_beta_one_one_density_is_one():
    """Beta(1, 1) ≡ 1 on [0, 1], boundaries included."""
    p = torch.linspace(0, 1, 11, dtype=torch.float64)
    one = torch.tensor(1.0, dtype=torch.float64)
    torch.testing.assert_close(inverse_beta_pdf(p, one, one, 1e6), torch.ones_like(p), rtol=0, atol=1e-12)


@given(st.floats(0.01, 0.99))
def test_beta_three_halves_is_grpo_population_std(p):
    """Beta(3/2, 3/2) pdf = (8/π)·sqrt(p(1−p)), so 1/pdf = (π/8)/σ_pop of a binary group with success rate p."""
    a = torch.tensor(1.5, dtype=torch.float64)
    got = float(inverse_beta_pdf(torch.tensor(p, dtype=torch.float64), a, a, 1e6))
    assert math.isclose(got, (math.pi / 8) / math.sqrt(p * (1 - p)), rel_tol=1e-9)


def test_moment_fit_reaching_three_halves_matches_grpo():
    """p = 0.5 ± sqrt(1/32) gives μ = 0.5, σ² = 1/16 → k = 3, α = β = 3/2: A = (π/8)(R − p)/sqrt(p(1−p))."""
    d = math.sqrt(1 / 32)
    p1, p2, x = 0.5 - d, 0.5 + d, 0.1
    inputs = make_inputs([p1 - x, p1 + x, p2 - x, p2 + x], [0, 0, 1, 1])
    alpha, beta = beta_parameters(torch.tensor([p1, p2], dtype=torch.float64))
    assert math.isclose(float(alpha), 1.5, rel_tol=1e-9) and math.isclose(float(beta), 1.5, rel_tol=1e-9)
    scale = torch.tensor([math.sqrt(p1 * (1 - p1))] * 2 + [math.sqrt(p2 * (1 - p2))] * 2)
    expected = (math.pi / 8) * torch.tensor([-x, x, -x, x]) / scale
    torch.testing.assert_close(BNPO.default()(inputs)[:, 0], expected.float(), rtol=1e-5, atol=1e-6)


@given(st.lists(st.integers(1, 7), min_size=2, max_size=6))
def test_three_halves_on_binary_groups_is_scaled_grpo(successes):
    """With α = β = 3/2, BNPO's normaliser on binary groups is (π/8)× GRPO with the population std (eps 0)."""
    rewards, ids = [], []
    for q, k in enumerate(successes):
        rewards += [1.0] * k + [0.0] * (8 - k)
        ids += [q] * 8
    inputs = make_inputs(rewards, ids)
    g = GRPO(build(GRPO.Config, {"std": "population", "eps": 0.0}))(inputs)[:, 0]
    r = inputs.rewards.double()
    p = torch.tensor([k / 8 for k in successes], dtype=torch.float64).repeat_interleave(8)
    a = torch.tensor(1.5, dtype=torch.float64)
    bnpo_32 = inverse_beta_pdf(p, a, a, 1e6) * (r - p)
    torch.testing.assert_close(bnpo_32.float(), (math.pi / 8) * g, rtol=1e-5, atol=1e-6)


@given(st.lists(st.floats(0, 1), min_size=0, max_size=10))
def test_alpha_beta_at_least_one(p):
    """The normaliser parameters are always >= 1 (and finite)."""
    alpha, beta = beta_parameters(torch.tensor(p, dtype=torch.float64))
    assert 1.0 <= float(alpha) < math.inf and 1.0 <= float(beta) < math.inf


@given(batches(min_group=2, min_len=1))
def test_sign_follows_reward_minus_mean(inputs):
    """sign(A) = sign(R − p_q): the normaliser is positive."""
    values = row_values(BNPO.default()(inputs), inputs)
    for rows in groups_of(inputs).values():
        r = inputs.rewards[rows].double()
        diff = r - r.mean()
        for v, d in zip(values[rows].tolist(), diff.tolist()):
            assert (v > 0) == (d > 1e-12) and (v < 0) == (d < -1e-12) or abs(d) <= 1e-12 and abs(v) <= 1e-6


@given(batches(min_group=2))
def test_parity_with_official_loop(inputs):
    """Matches the official per-group loop (torch Beta density) on batches of groups >= 2."""
    expected = torch.tensor(naive_bnpo(inputs.rewards.tolist(), inputs.group_ids.tolist()))
    torch.testing.assert_close(
        BNPO.default()(inputs), (expected[:, None] * inputs.mask).float(), rtol=1e-4, atol=1e-4
    )


def test_singletons_and_nan():
    """A lone or NaN reward gets 0 and stays out of the fit by default; singleton='raw' uses the official p = 0."""
    nan = float("nan")
    inputs = make_inputs([1, 0, 1, 0, nan, 0.5, nan], [0, 0, 1, 1, 1, 2, 3])
    adv = BNPO.default()(inputs)
    assert adv[[4, 5, 6]].eq(0).all()
    two = make_inputs([1, 0, 1, 0], [0, 0, 1, 1])
    torch.testing.assert_close(adv[:4], BNPO.default()(two), rtol=0, atol=1e-7)
    raw = bnpo(singleton="raw")(inputs)
    # question 2 enters with p = 0. Fit over p = (0.5, 0.5, 0): μ = 1/3, σ² = 1/12, k = (2/9)/(1/12) − 1 = 5/3,
    # α = 1 + (5/3)(1/3)/3 = 1.185 > 1 → pdf(0) = 0 → 1/pdf clamped to 1e6 → A = 0.5·1e6
    assert math.isclose(float(raw[5, 0]), 0.5 * 1e6, rel_tol=1e-6)
