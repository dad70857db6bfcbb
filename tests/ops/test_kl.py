"""Per-token KL estimators k1, k2, k3 (Schulman, "Approximating KL Divergence", 2020)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.errors import LmixError
from lmix_core.ops.kl import KL_ESTIMATORS, k1, k2, k3, kl_penalty

logps = st.floats(-15.0, 0.0)


def test_by_hand():
    """π_θ = 0.5, π_ref = 0.25: k1 = log 2, k2 = ½ log² 2, k3 = 0.5 − log 0.5 − 1 = log 2 − 0.5."""
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # k1 = 0.6931472 ; k2 = 0.5·0.4804530 = 0.2402265 ; k3 = π_ref/π_θ − log(π_ref/π_θ) − 1 = 0.5 + 0.6931472 − 1
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([0.6931472]), rtol=0, atol=1e-6)
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.2402265]), rtol=0, atol=1e-6)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([0.1931472]), rtol=0, atol=1e-6)


@given(logps, logps)
def test_k2_k3_non_negative(a, b):
    """k2 ≥ 0 and k3 ≥ 0 for any pair of log-probs (k3 up to float32 rounding of e^δ − δ − 1 near δ = 0)."""
    logp, ref = torch.tensor([a]), torch.tensor([b])
    assert float(k2(logp, ref)) >= 0 and float(k3(logp, ref)) >= -1e-6


@given(logps, st.sampled_from(KL_ESTIMATORS))
def test_zero_at_equality(a, name):
    """Every estimator is 0 when log π_θ = log π_ref; k2 and k3 also have zero gradient there."""
    logp = torch.tensor([a], requires_grad=True)
    value = kl_penalty(logp, logp.detach(), name)
    assert float(value) == 0
    (grad,) = torch.autograd.grad(value.sum(), [logp])
    if name != "k1":
        assert abs(float(grad)) < 1e-6


def test_k3_clamped_like_verl():
    """k3 is clamped to at most 10 (verl), so a huge divergence stays finite."""
    assert float(k3(torch.tensor([-50.0]), torch.tensor([0.0]))) == 10.0


def test_unbiased_in_expectation():
    """E_{a~π_θ}[k1] = E[k3] = KL(π_θ‖π_ref) (Monte Carlo, 200k draws over a 6-token vocabulary)."""
    gen = torch.Generator().manual_seed(0)
    logp_all = torch.log_softmax(torch.randn(6, generator=gen), -1).double()
    ref_all = torch.log_softmax(torch.randn(6, generator=gen), -1).double()
    exact = float((logp_all.exp() * (logp_all - ref_all)).sum())
    tokens = torch.multinomial(logp_all.exp(), 200_000, replacement=True, generator=gen)
    logp, ref = logp_all[tokens], ref_all[tokens]
    assert abs(float(k1(logp, ref).mean()) - exact) < 1e-2
    assert abs(float(k3(logp, ref).mean()) - exact) < 1e-2
    assert float(k2(logp, ref).mean()) >= 0  # k2 is biased; only its sign is guaranteed


def test_unknown_estimator():
    """An unknown estimator name raises LmixError listing the choices."""
    with pytest.raises(LmixError, match="'k1', 'k2', 'k3'"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")  # type: ignore[arg-type]


def test_straight_through_by_hand():
    """k3+ and k1+ (verl 0.9.1's '+' suffix) have k3's and k1's value and k2's gradient log π_θ − log π_ref.

    π_θ = (0.5, 0.2), π_ref = (0.25, 0.4): k3 = (log 2 − 0.5, 1 − log 2), k1 = (log 2, −log 2), k2's gradient
    (log 2, −log 2); verl 0.9.1's own ``kl_penalty`` gives these numbers for "k3+", "low_var_kl+" and "k1+".
    """
    ln2 = math.log(2.0)
    ref = torch.log(torch.tensor([0.25, 0.4]))
    for name, value in (("k3+", [ln2 - 0.5, 1.0 - ln2]), ("k1+", [ln2, -ln2])):
        logp = torch.log(torch.tensor([0.5, 0.2])).requires_grad_(True)
        out = kl_penalty(logp, ref, name)
        (grad,) = torch.autograd.grad(out.sum(), [logp])
        torch.testing.assert_close(out.detach(), torch.tensor(value), rtol=0, atol=1e-6)
        torch.testing.assert_close(grad, torch.tensor([ln2, -ln2]), rtol=0, atol=1e-6)
    logp = torch.log(torch.tensor([0.5, 0.2])).requires_grad_(True)
    (grad,) = torch.autograd.grad(kl_penalty(logp, ref, "k3").sum(), [logp])
    torch.testing.assert_close(grad, torch.tensor([0.5, -1.0]), rtol=0, atol=1e-6)  # 1 − π_ref/π_θ


def _expected_gradient(estimator: str, theta: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """∇_θ E_{a~π_θ}[k(a)] with the samples held fixed: Σ_a sg[π_θ(a)] ∇k(a) (the infinite-sample average)."""
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)  # [V]
    loss = (logp.exp().detach() * kl_penalty(logp, ref, estimator)).sum()
    (grad,) = torch.autograd.grad(loss, [theta])
    return grad


def _kl_gradients(theta: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇ KL(π_θ ‖ π_ref), ∇ KL(π_ref ‖ π_θ)) of the exact divergences."""
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)  # [V]
    reverse = (logp.exp() * (logp - ref)).sum()
    forward = (ref.exp() * (ref - logp)).sum()
    (g_rev,) = torch.autograd.grad(reverse, [theta], retain_graph=True)
    (g_fwd,) = torch.autograd.grad(forward, [theta])
    return g_rev, g_fwd


@pytest.mark.parametrize("seed", [0, 1])
def test_on_policy_gradient_directions(seed):
    """As loss terms on on-policy samples: k1's expected gradient is 0, k2's (and k1+'s, k3+'s) is the reverse-KL
    gradient ∇KL(π_θ‖π_ref), k3's is the forward-KL gradient ∇KL(π_ref‖π_θ). Exact expectations over a 6-token
    vocabulary, in float64."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(6, generator=gen, dtype=torch.float64)
    ref = torch.log_softmax(torch.randn(6, generator=gen, dtype=torch.float64), -1)
    g_rev, g_fwd = _kl_gradients(theta, ref)
    assert (
        float((g_rev - g_fwd).abs().max()) > 1e-2
    )  # the two directions differ, so the test can tell them apart
    torch.testing.assert_close(_expected_gradient("k1", theta, ref), torch.zeros(6, dtype=torch.float64))
    for name in ("k2", "k1+", "k3+"):
        torch.testing.assert_close(_expected_gradient(name, theta, ref), g_rev, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_expected_gradient("k3", theta, ref), g_fwd, rtol=1e-9, atol=1e-12)
