"""CHORD: the μ schedule and the φ token weights (arXiv 2508.11408)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.mixers.chord import Chord, mu_schedule, phi

from .helpers import inputs

unit = st.floats(0.0, 1.0)


def test_mu_schedule_by_hand():
    """w = 10, d = 20, μ_peak = 0.9, μ_valley = 0.1 at a few steps."""
    mu = lambda t: mu_schedule(t, 10, 20, 0.9, 0.1)
    assert mu(0) == 0.0
    assert mu(5) == pytest.approx(0.45, abs=1e-12)  # 0.9 · 5/10
    assert mu(10) == pytest.approx(0.9, abs=1e-12)  # cosine starts at the peak
    assert mu(20) == pytest.approx(0.5, abs=1e-12)  # 0.1 + 0.8 · ½(1 + cos(π/2))
    assert mu(30) == 0.1
    assert mu(1000) == 0.1


@given(w=st.integers(0, 50), d=st.integers(1, 50), peak=unit, valley=unit)
def test_mu_starts_at_zero_with_warmup_else_at_peak(w, d, peak, valley):
    """μ(0) = 0 when w > 0, μ(0) = μ_peak when w = 0."""
    assert mu_schedule(0, w, d, peak, valley) == pytest.approx(0.0 if w > 0 else peak, abs=1e-12)


@given(w=st.integers(0, 50), d=st.integers(0, 50), extra=st.integers(0, 1000), peak=unit, valley=unit)
def test_mu_is_valley_after_warmup_and_decay(w, d, extra, peak, valley):
    """μ(t) = μ_valley for every t ≥ w + d."""
    assert mu_schedule(w + d + extra, w, d, peak, valley) == valley


@given(
    w=st.integers(0, 30),
    d=st.integers(1, 30),
    peak=unit,
    valley=unit,
    t=st.floats(0.0, 80.0),
)
def test_mu_is_continuous_and_in_unit_interval(w, d, peak, valley, t):
    """Lipschitz continuity: |μ(t + ε) − μ(t)| ≤ L·ε with L the steepest slope; μ ∈ [0, 1]."""
    eps = 1e-6
    slope = (peak / w if w else 0.0) + math.pi * abs(peak - valley) / (2 * d)
    a, b = mu_schedule(t, w, d, peak, valley), mu_schedule(t + eps, w, d, peak, valley)
    assert abs(b - a) <= slope * eps + 1e-9
    assert 0.0 <= a <= 1.0


@given(p=st.floats(0.0, 1.0))
def test_phi_in_zero_quarter_with_maximum_at_half(p):
    """φ(p) = p(1 − p) ∈ [0, ¼] and φ(p) ≤ φ(½) = ¼."""
    value = float(phi(torch.tensor(math.log(p) if p > 0 else -math.inf, dtype=torch.float64)))
    assert 0.0 <= value <= 0.25
    assert value == pytest.approx(p * (1 - p), abs=1e-12)
    assert float(phi(torch.tensor(math.log(0.5)))) == pytest.approx(0.25, abs=1e-7)


def test_phi_weights_are_detached():
    """The φ-weighted NLL's gradient is −φ·∇log p with φ constant: no gradient flows through φ."""
    z = torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.5, -0.5]], requires_grad=True)  # [N, V]
    logp = torch.log_softmax(z, -1)[:, 0]  # [N]
    m = Chord(Chord.Config(token_weighting="phi"))
    w = m.sft_token_weights(logp)  # [N]
    assert not w.requires_grad
    (g,) = torch.autograd.grad((-w * logp).sum(), z)
    c = w.detach()  # [N]
    z2 = z.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((-c * torch.log_softmax(z2, -1)[:, 0]).sum(), z2)
    torch.testing.assert_close(g, g_ref, atol=1e-7, rtol=1e-6)


def test_no_token_weighting_gives_ones():
    """token_weighting = 'none': plain NLL (weights 1)."""
    logp = torch.tensor([[-0.5, -3.0]])  # [N, S]
    torch.testing.assert_close(Chord.default().sft_token_weights(logp), torch.ones(1, 2), atol=0, rtol=0)


@given(step=st.integers(0, 500))
def test_mu_zero_is_pure_grpo(step):
    """μ ≡ 0: every step samples rollouts, rl_coef 1, no SFT."""
    m = Chord(Chord.Config(mu_peak=0.0, mu_valley=0.0))
    plan = m.plan(step)
    d = m.mix(inputs(step, [[1, 0]]))
    assert (plan.rollouts, plan.sft, d.rl_coef, d.sft_coef, d.sft) == (True, False, 1.0, 0.0, ())


@given(step=st.integers(1, 500))
def test_mu_one_is_pure_sft(step):
    """μ ≡ 1 (no warm-up): no rollouts, sft_coef 1, no RL."""
    m = Chord(Chord.Config(mu_peak=1.0, mu_valley=1.0, warmup_steps=0))
    plan = m.plan(step)
    d = m.mix(inputs(step, None, qids=(2, 6)))
    assert (plan.rollouts, plan.sft, d.rl_coef, d.sft_coef, d.sft) == (
        False,
        True,
        0.0,
        1.0,
        ((2, 1.0), (6, 1.0)),
    )


@given(step=st.integers(0, 400))
def test_decision_follows_the_schedule(step):
    """Default CHORD-μ: rl_coef = 1 − μ_t and sft_coef = μ_t."""
    m = Chord.default()
    mu = m.mu(step)
    d = m.mix(inputs(step, [[0, 1]]))
    assert d.sft_coef == pytest.approx(mu, abs=1e-12) and d.rl_coef == pytest.approx(1 - mu, abs=1e-12)
