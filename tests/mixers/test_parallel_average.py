"""Parallel averaging: two optimiser states, RL and SFT every step, updates averaged ("RL Excursions during Pre-Training", arXiv 2606.04272)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.mixers.parallel_average import ParallelAverage
from lmix_core.ops.update_average import step_averaged

from .helpers import inputs


def test_declares_two_optimiser_states_with_half_weights():
    """Default: two states, update weights (½, ½) for (RL, SFT)."""
    m = ParallelAverage.default()
    assert type(m).num_optimizer_states == 2
    assert m.update_weights == (0.5, 0.5)


@given(w=st.floats(0.0, 1.0))
def test_update_weights_follow_rl_weight(w):
    """update_weights = (w, 1 − w), summing to 1."""
    m = ParallelAverage(ParallelAverage.Config(rl_weight=w))
    assert m.update_weights == (w, 1.0 - w)
    assert abs(sum(m.update_weights) - 1.0) <= 1e-12


@given(step=st.integers(0, 1000))
def test_both_terms_every_step_with_unit_coefficients(step):
    """Each step samples and trains on demonstrations; rl_coef = sft_coef = 1 (the averaging is on updates)."""
    m = ParallelAverage.default()
    plan = m.plan(step)
    d = m.mix(inputs(step, [[1, 0], [0, 0]], qids=(3, 4)))
    assert (plan.rollouts, plan.sft) == (True, True)
    assert (d.rl_coef, d.sft_coef, d.rl_weights, d.sft) == (1.0, 1.0, (1.0, 1.0), ((3, 1.0), (4, 1.0)))


@given(w=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_plain_sgd_step_is_weighted_average_of_the_two_steps(w, seed):
    """With the mixer's weights and plain SGD, θ' = θ̄ − η·(w·g_RL + (1 − w)·g_SFT), both grads at θ̄."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(2, 3, generator=gen, dtype=torch.float64))  # [V, H]
    bias = torch.nn.Parameter(torch.randn(2, generator=gen, dtype=torch.float64))  # [V]
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)  # [B, H]
    params = [weight, bias]
    theta_bar = [p.detach().clone() for p in params]
    logits = x @ weight.T + bias  # [B, V]
    g_rl = torch.autograd.grad(logits.square().mean(), params, retain_graph=True)  # stand-in RL loss at θ̄
    g_sft = torch.autograd.grad(-torch.log_softmax(logits, -1)[:, 0].mean(), params)  # stand-in NLL at θ̄
    m = ParallelAverage(ParallelAverage.Config(rl_weight=w))
    opts = [torch.optim.SGD(params, lr=0.1) for _ in range(type(m).num_optimizer_states)]
    step_averaged(params, [list(g_rl), list(g_sft)], opts, m.update_weights)
    for p, t, a, b in zip(params, theta_bar, g_rl, g_sft):
        torch.testing.assert_close(p.detach(), t - 0.1 * (w * a + (1 - w) * b), atol=1e-12, rtol=1e-9)
