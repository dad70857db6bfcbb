"""Update averaging from one snapshot with independent optimiser states (RL Excursions, arXiv 2606.04272)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.ops.update_average import present_weights, step_averaged


def _params(*values: list[float]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in values]


def _solo(theta: list[torch.Tensor], grads: list[torch.Tensor | None], make_opt, state=None):
    """One plain optimiser step from θ on cloned parameters: (θ after, optimiser)."""
    ps = [torch.nn.Parameter(t.detach().clone()) for t in theta]
    opt = make_opt(ps)
    if state is not None:
        opt.load_state_dict(state)
    for p, g in zip(ps, grads):
        p.grad = None if g is None else g.clone()
    opt.step()
    return [p.detach().clone() for p in ps], opt


def test_sgd_equal_weights_is_average_of_the_two_steps():
    """Plain SGD, one step, w = (½, ½): θ' = θ̄ − η·½(g_RL + g_SFT), by hand."""
    (p,) = _params([1.0, -2.0])
    g_rl, g_sft = (
        torch.tensor([0.5, 1.0], dtype=torch.float64),
        torch.tensor([1.5, -1.0], dtype=torch.float64),
    )
    opts = [torch.optim.SGD([p], lr=0.1), torch.optim.SGD([p], lr=0.1)]
    step_averaged([p], [[g_rl], [g_sft]], opts, [0.5, 0.5])
    # RL step: [1 − 0.05, −2 − 0.1] = [0.95, −2.1]; SFT step: [1 − 0.15, −2 + 0.1] = [0.85, −1.9]; mean [0.9, −2.0]
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -2.0], dtype=torch.float64), atol=1e-12, rtol=0)


@given(
    theta=st.lists(st.floats(-10, 10), min_size=1, max_size=6),
    data=st.data(),
    lr=st.floats(1e-4, 1.0),
    weights=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=3),
)
def test_sgd_update_is_weighted_gradient_sum(theta, data, lr, weights):
    """Plain SGD, one step, any K and weights: θ' = θ̄ − η·Σ_k w_k g_k."""
    n = len(theta)
    grads = [
        torch.tensor(data.draw(st.lists(st.floats(-10, 10), min_size=n, max_size=n)), dtype=torch.float64)
        for _ in weights
    ]
    (p,) = _params(theta)
    opts = [torch.optim.SGD([p], lr=lr) for _ in weights]
    step_averaged([p], [[g] for g in grads], opts, weights)
    expected = torch.tensor(theta, dtype=torch.float64) - lr * sum(w * g for w, g in zip(weights, grads))
    torch.testing.assert_close(p.detach(), expected, atol=1e-9, rtol=1e-9)


@given(w=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_two_convex_weights_match_solo_adamw_steps(w, seed):
    """AdamW, w + (1 − w) = 1: θ' = θ̄ + w·Δ_RL + (1 − w)·Δ_SFT with each Δ a plain solo step from θ̄."""
    gen = torch.Generator().manual_seed(seed)
    theta = [
        torch.randn(3, 2, generator=gen, dtype=torch.float64),
        torch.randn(4, generator=gen, dtype=torch.float64),
    ]
    grads = [[torch.randn_like(t) for t in theta] for _ in range(2)]
    make = lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)
    params = [torch.nn.Parameter(t.clone()) for t in theta]
    step_averaged(params, grads, [make(params), make(params)], [w, 1.0 - w])
    after_rl, _ = _solo(theta, grads[0], make)
    after_sft, _ = _solo(theta, grads[1], make)
    for p, t, a, b in zip(params, theta, after_rl, after_sft):
        torch.testing.assert_close(p.detach(), t + w * (a - t) + (1 - w) * (b - t), atol=1e-12, rtol=1e-9)


def test_optimiser_states_stay_independent_and_bit_identical():
    """After 3 averaged steps each AdamW state equals, bit for bit, a solo AdamW fed the same gradients at the same θ̄."""
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(5, generator=gen)),
        torch.nn.Parameter(torch.randn(2, 3, generator=gen)),
    ]
    make = lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.01)
    opts = [make(params), make(params)]
    for _ in range(3):
        grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(2)]
        theta_bar = [p.detach().clone() for p in params]
        before = [copy.deepcopy(o.state_dict()) for o in opts]
        step_averaged(params, grads, opts, [0.5, 0.5])
        for k in range(2):
            _, solo = _solo(theta_bar, grads[k], make, state=before[k])
            mine, ref = opts[k].state_dict()["state"], solo.state_dict()["state"]
            for j in range(len(params)):
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    assert torch.equal(mine[j][key], ref[j][key]), (k, j, key)


def test_identical_updates_give_that_update():
    """If Δ_RL = Δ_SFT = Δ then θ' = θ̄ + Δ (same gradient, same AdamW settings, fresh states)."""
    gen = torch.Generator().manual_seed(1)
    theta = [torch.randn(4, generator=gen, dtype=torch.float64)]
    g = [torch.randn(4, generator=gen, dtype=torch.float64)]
    make = lambda ps: torch.optim.AdamW(ps, lr=0.1)
    params = [torch.nn.Parameter(theta[0].clone())]
    step_averaged(params, [g, g], [make(params), make(params)], [0.5, 0.5])
    after, _ = _solo(theta, g, make)
    torch.testing.assert_close(params[0].detach(), after[0], atol=1e-12, rtol=0)


@given(seed=st.integers(0, 2**16))
def test_half_weights_are_symmetric_under_swapping(seed):
    """With w = ½ swapping the RL and SFT (gradient, state) pairs gives the same parameters."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(6, generator=gen)
    g_a, g_b = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    make = lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.8, 0.99))
    out = []
    for pair in ((g_a, g_b), (g_b, g_a)):
        p = torch.nn.Parameter(theta.clone())
        step_averaged([p], [[pair[0]], [pair[1]]], [make([p]), make([p])], [0.5, 0.5])
        out.append(p.detach())
    torch.testing.assert_close(out[0], out[1], atol=1e-7, rtol=1e-6)


def test_adamw_decoupled_weight_decay_is_applied_once_at_the_mean_rate():
    """Zero gradients: each AdamW Δ_k = −lr·wd_k·θ̄, so θ' = θ̄·(1 − lr·Σ_k w_k wd_k), by hand."""
    (p,) = _params([2.0, -4.0])
    zero = torch.zeros(2, dtype=torch.float64)
    opts = [
        torch.optim.AdamW([p], lr=0.1, weight_decay=0.2),
        torch.optim.AdamW([p], lr=0.1, weight_decay=0.6),
    ]
    step_averaged([p], [[zero], [zero.clone()]], opts, [0.5, 0.5])
    # mean decay rate = 0.1 · ½(0.2 + 0.6) = 0.04 → θ' = 0.96·θ̄ = [1.92, −3.84]
    torch.testing.assert_close(
        p.detach(), torch.tensor([1.92, -3.84], dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_missing_gradient_leaves_that_parameter_to_the_other_state():
    """A None gradient makes that state's Δ zero there: θ' = θ̄ + w_other·Δ_other (SGD, by hand)."""
    a, b = _params([1.0], [3.0])
    opts = [torch.optim.SGD([a, b], lr=1.0), torch.optim.SGD([a, b], lr=1.0)]
    one = torch.ones(1, dtype=torch.float64)
    step_averaged([a, b], [[one, None], [one, 2 * one]], opts, [0.25, 0.75])
    # a: Δ_0 = −1, Δ_1 = −1 → 1 − 1 = 0;  b: Δ_0 = 0, Δ_1 = −2 → 3 − 0.75·2 = 1.5
    torch.testing.assert_close(a.detach(), torch.tensor([0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(b.detach(), torch.tensor([1.5], dtype=torch.float64), atol=1e-12, rtol=0)
    assert a.grad is None and b.grad is None


def test_single_state_weight_one_is_a_plain_step():
    """K = 1 with weight 1 is exactly ``optimizer.step()``."""
    (p,) = _params([1.0, 2.0])
    step_averaged(
        [p], [[torch.tensor([1.0, -1.0], dtype=torch.float64)]], [torch.optim.SGD([p], lr=0.5)], [1.0]
    )
    torch.testing.assert_close(p.detach(), torch.tensor([0.5, 2.5], dtype=torch.float64), atol=0, rtol=0)


def test_rejects_malformed_calls():
    """Mismatched lengths, non-finite weights and parameters outside ``params`` raise ValueError."""
    a, b = _params([1.0], [2.0])
    g = [torch.ones(1, dtype=torch.float64)]
    with pytest.raises(ValueError, match="one gradient list and one weight per optimiser"):
        step_averaged([a], [g], [torch.optim.SGD([a], lr=1.0)] * 2, [0.5, 0.5])
    with pytest.raises(ValueError, match="one entry per parameter"):
        step_averaged([a], [g + g], [torch.optim.SGD([a], lr=1.0)], [1.0])
    with pytest.raises(ValueError, match="finite"):
        step_averaged([a], [g], [torch.optim.SGD([a], lr=1.0)], [float("nan")])
    with pytest.raises(ValueError, match="not in 'params'"):
        step_averaged([a], [g], [torch.optim.SGD([a, b], lr=1.0)], [1.0])


@pytest.mark.parametrize(
    ("weights", "present", "expected"),
    [
        ((0.5, 0.5), (True, True), (0.5, 0.5)),
        ((0.5, 0.5), (True, False), (1.0, 0.0)),
        ((0.3, 0.7), (False, True), (0.0, 1.0)),
        ((0.3, 0.7), (True, False), (1.0, 0.0)),
        ((0.2, 0.3, 0.5), (True, False, True), (0.2 / 0.7, 0.0, 0.5 / 0.7)),
        ((0.0, 1.0), (True, False), (0.0, 0.0)),
        ((0.5, 0.5), (False, False), (0.0, 0.0)),
    ],
)
def test_present_weights_rescale_to_the_same_total(weights, present, expected):
    """w'_k = w_k · Σw / Σ_present w; an absent state gets 0; present weights summing to 0 stay 0."""
    assert present_weights(weights, present) == pytest.approx(expected, abs=1e-15)


def test_empty_group_applies_the_other_update_at_full_weight_and_leaves_its_state_alone():
    """w = (0.3, 0.7), the SFT state absent: θ' = θ̄ + Δ_RL, exactly a solo AdamW step (not 0.3 of it); the
    absent optimiser's state stays empty (no moments, no step count)."""
    gen = torch.Generator().manual_seed(5)
    theta = [torch.randn(3, 2, generator=gen, dtype=torch.float64)]
    g_rl = [torch.randn(3, 2, generator=gen, dtype=torch.float64)]
    make = lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)
    params = [torch.nn.Parameter(theta[0].clone())]
    opts = [make(params), make(params)]
    step_averaged(
        params, [g_rl, [torch.zeros(3, 2, dtype=torch.float64)]], opts, [0.3, 0.7], present=[True, False]
    )
    solo, solo_opt = _solo(theta, g_rl, make)
    torch.testing.assert_close(params[0].detach(), solo[0], atol=0, rtol=0)
    assert not opts[1].state
    torch.testing.assert_close(
        opts[0].state[params[0]]["exp_avg"], solo_opt.state[solo_opt.param_groups[0]["params"][0]]["exp_avg"]
    )
    assert params[0].grad is None


def test_no_present_state_moves_nothing():
    (p,) = _params([1.0, 2.0])
    opts = [torch.optim.SGD([p], lr=1.0), torch.optim.SGD([p], lr=1.0)]
    one = torch.ones(2, dtype=torch.float64)
    step_averaged([p], [[one], [one]], opts, [0.5, 0.5], present=[False, False])
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64), atol=0, rtol=0)
    assert p.grad is None
