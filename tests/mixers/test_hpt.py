"""HPT's per-question gate (arXiv 2509.04419)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.mixers.hpt import HPT
from lmix_core.types import MixerInputs

from .helpers import inputs


@st.composite
def groups(draw, max_q: int = 6, max_g: int = 8):
    """A [Q, G] 0/1 correctness matrix."""
    Q, G = draw(st.integers(1, max_q)), draw(st.integers(1, max_g))
    return [draw(st.lists(st.integers(0, 1), min_size=G, max_size=G)) for _ in range(Q)]


def test_switch_by_hand():
    """γ = 0: only the 0/4-correct question trains on its demonstration; the others stay RL."""
    d = HPT.default().mix(inputs(0, [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], qids=(10, 11, 12)))
    assert d.rl_weights == (0.0, 1.0, 1.0)
    assert d.sft == ((10, 1.0),)
    assert (d.rl_coef, d.sft_coef, d.label) == (1.0, 1.0, "mixed")


@given(correct=groups(), gamma=st.integers(-1, 9))
def test_switch_gate_is_sft_only_at_or_below_gamma(correct, gamma):
    """P ≤ γ ⇒ the question contributes only SFT (weight 1); P > γ ⇒ only RL."""
    m = HPT(HPT.Config(switch_gate=gamma))
    qids = tuple(range(100, 100 + len(correct)))
    d = m.mix(inputs(0, correct, qids=qids))
    sft = dict(d.sft)
    for q, row, w_rl in zip(qids, correct, d.rl_weights):
        if sum(row) <= gamma:
            assert (w_rl, sft.get(q)) == (0.0, 1.0)
        else:
            assert w_rl == 1.0 and q not in sft


@given(correct=groups())
def test_gamma_minus_one_is_pure_rl(correct):
    """γ = −1: no demonstrations at all, every question RL (and the plan asks for no SFT)."""
    m = HPT(HPT.Config(switch_gate=-1))
    d = m.mix(inputs(0, correct))
    assert not m.plan(0).sft
    assert (d.sft, d.sft_coef, d.rl_coef, d.label) == ((), 0.0, 1.0, "rl")
    assert all(w == 1.0 for w in d.rl_weights)


@given(correct=groups())
def test_gamma_group_size_is_pure_sft(correct):
    """γ = G: every question trains on its demonstration, no RL term."""
    G = len(correct[0])
    d = HPT(HPT.Config(switch_gate=G)).mix(inputs(0, correct))
    assert (d.rl_coef, d.sft_coef, d.label) == (0.0, 1.0, "sft")
    assert all(w == 0.0 for w in d.rl_weights) and len(d.sft) == len(correct)


def test_soft_gate_by_hand():
    """soft, γ = 0, τ = 0.5: w_SFT(P) = σ((0.5 − P)/0.5): P = 0 → σ(1), P = 2 → σ(−3)."""
    m = HPT(HPT.Config(mode="soft"))
    d = m.mix(inputs(0, [[0, 0, 0], [1, 1, 0]], qids=(1, 2)))
    s1, s3 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(3))  # 0.7311, 0.0474
    assert dict(d.sft) == {1: pytest.approx(s1, abs=1e-12), 2: pytest.approx(s3, abs=1e-12)}
    assert d.rl_weights == (pytest.approx(1 - s1, abs=1e-12), pytest.approx(1 - s3, abs=1e-12))


@given(gamma=st.integers(-1, 8), tau=st.floats(0.05, 10.0))
def test_soft_gate_is_monotone_and_convex(gamma, tau):
    """soft: w_SFT + w_RL = 1, both in [0, 1], w_SFT non-increasing in the number correct."""
    m = HPT(HPT.Config(mode="soft", switch_gate=gamma, soft_temperature=tau))
    w = m.sft_gate(torch.arange(9))  # [9]
    assert bool(((w >= 0) & (w <= 1)).all())
    assert bool((w[1:] <= w[:-1]).all())


@given(correct=groups(), gamma=st.integers(-1, 8))
def test_soft_tends_to_switch_as_temperature_vanishes(correct, gamma):
    """soft with τ → 0 makes the switch decisions."""
    hard = HPT(HPT.Config(switch_gate=gamma)).sft_gate(torch.tensor([sum(r) for r in correct]))  # [Q]
    soft = HPT(HPT.Config(mode="soft", switch_gate=gamma, soft_temperature=1e-3))
    torch.testing.assert_close(
        soft.sft_gate(torch.tensor([sum(r) for r in correct])), hard, atol=1e-12, rtol=0
    )


def test_sft_coef_scales_the_sft_term():
    """sft_coef = 0.3 (HPT's 1.5B setting) becomes the decision's sft_coef."""
    d = HPT(HPT.Config(sft_coef=0.3)).mix(inputs(0, [[0, 0]]))
    assert (d.sft_coef, d.rl_coef, d.label) == (0.3, 0.0, "sft")


def test_rewards_count_as_correct_at_one_when_no_verdicts():
    """Without ``correct``, a rollout counts as correct iff its reward is ≥ 1 (HPT: reward == 1)."""
    r = torch.tensor([[0.9, 0.5], [1.0, 0.0]])  # [Q, G]: question 0 has no reward ≥ 1
    d = HPT.default().mix(MixerInputs(step=0, question_ids=(0, 1), rewards=r))
    assert d.rl_weights == (0.0, 1.0) and d.sft == ((0, 1.0),)


def test_rejects_rewards_of_the_wrong_shape():
    """Rewards must have one row per question."""
    with pytest.raises(ValueError, match=r"\[Q, G\]"):
        HPT.default().mix(MixerInputs(step=0, question_ids=(0, 1, 2), rewards=torch.zeros(2, 4)))
