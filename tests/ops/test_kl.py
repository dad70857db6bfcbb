"""Per-token KL estimators k1, k2, k3 (algorithm note §7, §9; Schulman 2020)."""

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
    """k2 ≥ 0 and k3 ≥ 0 for any pair of log-probs."""
    logp, ref = torch.tensor([a]), torch.tensor([b])
    assert float(k2(logp, ref)) >= 0 and float(k3(logp, ref)) >= 0


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
