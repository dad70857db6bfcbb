"""LUFFY's off-policy shaping f(p) = p/(p+γ) ("Learning to Reason under Off-Policy Guidance", arXiv 2504.14945)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.ops.offpolicy import apply_shaping, shaped_tokens, shaping

probs = st.floats(1e-6, 1.0)
gammas = st.floats(1e-3, 10.0)


@given(probs, probs, gammas)
def test_increasing(p, q, gamma):
    """f is increasing in p."""
    lo, hi = sorted((p, q))
    assert float(shaping(torch.tensor(lo), gamma)) <= float(shaping(torch.tensor(hi), gamma))


@given(gammas)
def test_value_at_one(gamma):
    """f(1) = 1/(1+γ)."""
    assert abs(float(shaping(torch.tensor(1.0, dtype=torch.float64), gamma)) - 1 / (1 + gamma)) < 1e-12


@given(probs, gammas)
def test_derivative(p, gamma):
    """f′(p) = γ/(p+γ)²."""
    x = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(shaping(x, gamma), [x])
    assert abs(float(grad) - gamma / (p + gamma) ** 2) <= 1e-9 * max(1.0, gamma / (p + gamma) ** 2)


@given(probs)
def test_large_gamma_limit(p):
    """γ·f(p) → p as γ → ∞ (plain off-policy PG with π_φ = 1)."""
    gamma = 1e8
    assert abs(gamma * float(shaping(torch.tensor(p, dtype=torch.float64), gamma)) - p) < 1e-6


def test_shaped_loss_by_hand():
    """p = 0.5, γ = 0.1, Â = 2: ℓ = −2 · 0.5/0.6 = −1.6666667 on the marked token; the other keeps its loss."""
    mask = torch.tensor([[True, True, False]])
    off = torch.tensor([[True, False, True]])
    shaped = shaped_tokens(mask, off, 0.1)
    assert shaped.tolist() == [[True, False, False]]
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    out = apply_shaping(
        torch.full((1, 3), 7.0), logp=logp, advantages=torch.full((1, 3), 2.0), shaped=shaped, gamma=0.1
    )
    torch.testing.assert_close(out, torch.tensor([[-1.6666667, 7.0, 7.0]]), rtol=0, atol=1e-6)


def test_gamma_none_shapes_nothing():
    """Without γ (or without marks) no token is shaped."""
    mask = torch.ones(2, 2, dtype=torch.bool)
    assert not shaped_tokens(mask, mask, None).any()
    assert not shaped_tokens(mask, None, 0.1).any()
