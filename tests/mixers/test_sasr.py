"""SASR: SFT warm-up then a seeded SFT-or-GRPO draw per step."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.errors import LmixError
from lmix_core.mixers.rl import RL
from lmix_core.mixers.sasr import SASR, sft_probability

from .helpers import feedback, inputs

forms = st.sampled_from(["ratio", "clipped"])
norms = st.floats(0.0, 1e6)


def run(m: SASR, steps: int, sft_norm=lambda t: 1.0, kl=lambda t: None) -> list[str]:
    """Drive SASR like the loop; return each step's label."""
    labels = []
    for t in range(steps):
        plan = m.plan(t)
        assert plan.rollouts != plan.sft  # exactly one of GRPO (rollouts) or SFT
        d = m.mix(inputs(t, [[1, 0]] if plan.rollouts else None, qids=(t,)))
        m.observe(feedback(t, d, grad_norm_sft=sft_norm(t) if plan.sft else None, kl_to_initial=kl(t)))
        labels.append(d.label)
    return labels


def test_probability_forms_by_hand():
    """(a) G/(G + γG_w) and (b) min(1, γG/G_w), plus the additive divergence term."""
    assert sft_probability("ratio", 2.0, 1.0, 1.0, 0.0, 0.0) == pytest.approx(2 / 3, abs=1e-12)
    assert sft_probability("clipped", 2.0, 1.0, 0.25, 0.0, 0.0) == pytest.approx(0.5, abs=1e-12)
    assert sft_probability("clipped", 2.0, 1.0, 0.5, 0.0, 0.0) == 1.0  # min(1, 1.0)
    assert sft_probability("ratio", 1.0, 1.0, 1.0, 1.0, 0.2) == pytest.approx(0.7, abs=1e-12)  # 0.5 + 0.2·1


@given(
    form=forms, g=norms, g_w=norms, gamma=st.floats(1e-3, 1e3), kl=st.floats(-1.0, 1e3), lam=st.floats(0, 10)
)
def test_probability_in_unit_interval(form, g, g_w, gamma, kl, lam):
    """p_t ∈ [0, 1] for both forms, any norms, divergence and coefficients."""
    assert 0.0 <= sft_probability(form, g, g_w, gamma, kl, lam) <= 1.0


@given(
    form=forms, g1=norms, g2=norms, g_w=st.floats(1e-6, 1e6), gamma=st.floats(1e-3, 1e3), lam=st.floats(0, 1)
)
def test_probability_non_decreasing_in_last_sft_norm(form, g1, g2, g_w, gamma, lam):
    """For fixed G_warmup and γ, p_t is non-decreasing in G_last_SFT."""
    lo, hi = sorted((g1, g2))
    assert sft_probability(form, lo, g_w, gamma, 0.1, lam) <= sft_probability(form, hi, g_w, gamma, 0.1, lam)


@given(W=st.integers(1, 12), seed=st.integers(0, 1000), form=forms, steps=st.integers(0, 30))
def test_warmup_is_exactly_w_sft_steps_then_one_kind_per_step(W, seed, form, steps):
    """Steps 0 … W−1 are SFT; every step (warm-up or not) is exactly one of SFT or GRPO."""
    m = SASR(SASR.Config(warmup_steps=W, seed=seed, p_form=form))
    labels = run(m, W + steps, sft_norm=lambda t: 1.0 + 0.3 * t)
    assert labels[:W] == ["sft"] * W
    assert set(labels) <= {"sft", "grpo"}


@given(seed=st.integers(0, 2**31))
def test_reproducible_under_a_seed(seed):
    """Two runs with the same seed make the same choices."""
    cfg = SASR.Config(warmup_steps=2, seed=seed)
    assert run(SASR(cfg), 40) == run(SASR(cfg), 40)


def test_seed_changes_the_draws():
    """At p = ½ two seeds giving the same 64 choices would have chance 2⁻⁶⁴: the seed is used."""
    a = run(SASR(SASR.Config(warmup_steps=1, seed=1)), 65)
    b = run(SASR(SASR.Config(warmup_steps=1, seed=2)), 65)
    assert a != b


def test_sft_frequency_matches_probability():
    """Constant norms, γ = 3, ratio form: p = 1/(1 + 3) = ¼, so ≈ 25% of 2000 hybrid steps are SFT."""
    labels = run(SASR(SASR.Config(warmup_steps=1, gamma=3.0, seed=7)), 2001)[1:]
    assert labels.count("sft") / 2000 == pytest.approx(0.25, abs=0.05)


def test_records_warmup_norm_at_last_warmup_step_and_latest_sft_norm():
    """G_warmup is the SFT norm of step W−1; G_last_SFT follows SFT steps only."""
    m = SASR(SASR.Config(warmup_steps=3, p_form="clipped", gamma=1.0))
    run(m, 3, sft_norm=lambda t: 10.0 + t)  # norms 10, 11, 12 → G_warmup = 12
    assert m.state_dict()["g_warmup"] == 12.0
    assert m.sft_probability() == 1.0  # min(1, 12/12)
    d = m.mix(inputs(3, None if m.plan(3).sft else [[0, 1]], qids=(3,)))
    m.observe(feedback(3, d, grad_norm_sft=6.0 if d.label == "sft" else None, grad_norm_rl=99.0))
    expected = 0.5 if d.label == "sft" else 1.0  # an SFT step at norm 6 halves p; a GRPO step changes nothing
    assert m.sft_probability() == pytest.approx(expected, abs=1e-12)


def test_whole_step_norm_stands_in_for_the_sft_norm():
    """An SFT-only step reporting only grad_norm records it as the SFT norm."""
    m = SASR(SASR.Config(warmup_steps=1))
    d = m.mix(inputs(0, None))
    m.observe(feedback(0, d, grad_norm=4.0))
    assert m.state_dict()["g_warmup"] == 4.0


def test_divergence_raises_the_sft_probability():
    """With λ = 0.5 and KL 0.4 reported, p = ½ + 0.5·0.4 = 0.7 (ratio form at G = G_w, γ = 1)."""
    m = SASR(SASR.Config(warmup_steps=1, divergence_coef=0.5))
    d = m.mix(inputs(0, None))
    m.observe(feedback(0, d, grad_norm_sft=2.0, kl_to_initial=0.4))
    assert m.sft_probability() == pytest.approx(0.7, abs=1e-12)


def test_needs_reference_exactly_when_the_divergence_term_is_on():
    """The run loads the initial policy for D only when λ > 0; mixers default to needing none."""
    assert SASR(SASR.Config(divergence_coef=0.5)).needs_reference is True
    assert SASR(SASR.Config()).needs_reference is False
    assert RL(RL.Config()).needs_reference is False


def test_grpo_step_without_divergence_fails_loudly_when_lambda_is_on():
    """λ > 0 and a GRPO step reported without kl_to_initial: LmixError, never a silent D = 0. With λ = 0 the
    missing KL is fine, and SFT steps never need it."""
    m = SASR(SASR.Config(warmup_steps=1, divergence_coef=0.5, gamma=1e6))
    run(m, 1)  # the SFT warm-up step: no KL needed
    assert m.plan(1).rollouts  # p ≈ 1e-6: GRPO
    d = m.mix(inputs(1, [[1, 0]], qids=(1,)))
    with pytest.raises(LmixError, match="divergence_coef"):
        m.observe(feedback(1, d))
    off = SASR(SASR.Config(warmup_steps=1, gamma=1e6))
    run(off, 1)
    assert off.plan(1).rollouts
    off.observe(feedback(1, off.mix(inputs(1, [[1, 0]], qids=(1,)))))


def test_missing_warmup_norm_fails_loudly():
    """No SFT gradient norm reported during warm-up: the first adaptive plan raises LmixError."""
    m = SASR(SASR.Config(warmup_steps=1))
    d = m.mix(inputs(0, None))
    m.observe(feedback(0, d))
    with pytest.raises(LmixError, match="grad_norm_sft"):
        m.plan(1)


def test_state_dict_resumes_the_same_choices():
    """A mixer restored from a mid-run state_dict continues with the original's choices."""
    cfg = SASR.Config(warmup_steps=2, seed=11)
    full = run(SASR(cfg), 30)
    first = SASR(cfg)
    run(first, 10)
    resumed = SASR(cfg)
    resumed.load_state_dict(first.state_dict())
    tail = []
    for t in range(10, 30):
        plan = resumed.plan(t)
        d = resumed.mix(inputs(t, [[1, 0]] if plan.rollouts else None, qids=(t,)))
        resumed.observe(feedback(t, d, grad_norm_sft=1.0 if plan.sft else None))
        tail.append(d.label)
    assert full[10:] == tail
