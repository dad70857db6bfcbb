"""Logit averaging (Gan & Zhu, arXiv 2605.20555): invariants of the normalised geometric mixture, plus hand examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lmix_core import registries
from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.config import build
from lmix_core.errors import BackendError, ConfigError
from lmix_core.testing.combiner import check_combiner

ATOL = 1e-9
RTOL = 1e-9


@st.composite
def logit_pairs(draw, min_rows=1):
    """Two float64 logit tensors of one shape ``[R, V]`` with entries in [−30, 30]."""
    rows = draw(st.integers(min_rows, 4))
    vocab = draw(st.integers(2, 8))
    elems = st.floats(-30.0, 30.0, allow_nan=False, allow_infinity=False)
    a = draw(arrays(np.float64, (rows, vocab), elements=elems))
    b = draw(arrays(np.float64, (rows, vocab), elements=elems))
    return torch.from_numpy(a), torch.from_numpy(b)


alphas = st.floats(0.0, 1.0, allow_nan=False)


def mix(alpha, z_pol, z_ref):
    return LogitAverage(LogitAverage.Config(alpha=alpha)).mix_logits(z_pol, [z_ref])


def probs(z):
    return torch.softmax(z, dim=-1)


def test_registered_and_declared():
    """``logit_average`` is registered, takes one reference, needs no entropy and defaults to α = 0.5."""
    assert registries.combiners.get("logit_average") is LogitAverage
    combiner = LogitAverage.default()
    assert combiner.num_references == 1 and combiner.needs_entropy is False
    assert combiner.config.alpha == 0.5 and combiner.deploy == "combined"


def test_deploy_is_a_config_choice():
    """``deploy`` reads the Config: the mix by default, the trained policy on request."""
    assert LogitAverage(LogitAverage.Config(deploy="policy")).deploy == "policy"


def test_config_is_validated():
    """α outside [0, 1] and unknown deploy targets are rejected with attrs-style messages."""
    with pytest.raises(ConfigError, match="'alpha' must be <= 1"):
        build(LogitAverage.Config, {"alpha": 1.5})
    with pytest.raises(ConfigError, match="'alpha' must be >= 0"):
        build(LogitAverage.Config, {"alpha": -0.1})
    with pytest.raises(ConfigError, match="deploy"):
        build(LogitAverage.Config, {"deploy": "teacher"})
    assert build(LogitAverage.Config, {"alpha": 1}).alpha == 1.0


def test_hand_computed_mixture():
    """α = 0.5 of z_θ = [ln 4, 0] and z_ref = [0, 0] is z = [ln 2, 0], so π = [2/3, 1/3]."""
    z = mix(0.5, torch.tensor([[math.log(4.0), 0.0]]), torch.tensor([[0.0, 0.0]]))
    torch.testing.assert_close(z, torch.tensor([[math.log(2.0), 0.0]]), atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(probs(z), torch.tensor([[2 / 3, 1 / 3]]), atol=1e-7, rtol=1e-7)


def test_hand_computed_disagreement_is_uniform():
    """α = 0.5 of [2, 0] and [0, 2]: both coordinates average to 1, so π = [½, ½]."""
    z = mix(0.5, torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    torch.testing.assert_close(probs(z), torch.tensor([[0.5, 0.5]]), atol=1e-7, rtol=1e-7)


@given(logit_pairs(), alphas)
def test_identical_logits_give_the_same_distribution(pair, alpha):
    """softmax(α z + (1 − α) z) = softmax(z)."""
    z, _ = pair
    torch.testing.assert_close(probs(mix(alpha, z, z.clone())), probs(z), atol=ATOL, rtol=RTOL)


@given(logit_pairs())
def test_alpha_one_is_the_policy_and_alpha_zero_the_reference(pair):
    """α = 1 gives π_θ; α = 0 gives π_ref."""
    z_pol, z_ref = pair
    torch.testing.assert_close(probs(mix(1.0, z_pol, z_ref)), probs(z_pol), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(probs(mix(0.0, z_pol, z_ref)), probs(z_ref), atol=ATOL, rtol=RTOL)


@given(logit_pairs(), alphas)
def test_mixture_is_normalised(pair, alpha):
    """π_mix is a distribution: non-negative, summing to 1 on every row."""
    p = probs(mix(alpha, *pair))
    assert bool((p >= 0).all())
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[0], dtype=p.dtype), atol=ATOL, rtol=RTOL)


@given(logit_pairs(), alphas, st.floats(-1e3, 1e3), st.floats(-1e3, 1e3))
def test_per_row_shift_invariance(pair, alpha, c_pol, c_ref):
    """Adding per-row constants to either model's logits leaves π_mix unchanged."""
    z_pol, z_ref = pair
    rows = z_pol.shape[0]
    shift_pol = c_pol * torch.linspace(-1.0, 1.0, rows, dtype=torch.float64)[:, None]  # [R, 1]
    shift_ref = c_ref * torch.linspace(1.0, -0.5, rows, dtype=torch.float64)[:, None]  # [R, 1]
    moved = probs(mix(alpha, z_pol + shift_pol, z_ref + shift_ref))
    torch.testing.assert_close(moved, probs(mix(alpha, z_pol, z_ref)), atol=1e-7, rtol=1e-7)


@given(logit_pairs(), alphas)
def test_mixture_is_the_normalised_geometric_mean(pair, alpha):
    """π_mix = π_θ^α π_ref^(1−α) / Z: mixing logits equals mixing log-softmaxes."""
    z_pol, z_ref = pair
    log_geo = alpha * torch.log_softmax(z_pol, -1) + (1 - alpha) * torch.log_softmax(z_ref, -1)  # [R, V]
    torch.testing.assert_close(probs(mix(alpha, z_pol, z_ref)), probs(log_geo), atol=ATOL, rtol=RTOL)


@given(logit_pairs(), alphas, st.data())
def test_gradient_is_alpha_times_e_a_minus_pi_mix(pair, alpha, data):
    """∂ log π_mix(a)/∂z_θ = α(e_a − π_mix): sums to 0, is 0 at α = 0, and never reaches z_ref."""
    z_pol, z_ref = (z.clone().requires_grad_(True) for z in pair)
    rows, vocab = z_pol.shape
    a = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=rows, max_size=rows)))
    logq = torch.log_softmax(mix(alpha, z_pol, z_ref), dim=-1)  # [R, V]
    logq.gather(-1, a[:, None]).sum().backward()
    pi = probs(mix(alpha, z_pol.detach(), z_ref.detach()))  # [R, V]
    expected = alpha * (torch.nn.functional.one_hot(a, vocab).double() - pi)  # [R, V]
    torch.testing.assert_close(z_pol.grad, expected, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(
        z_pol.grad.sum(-1), torch.zeros(rows, dtype=torch.float64), atol=ATOL, rtol=0.0
    )
    assert z_ref.grad is None
    if alpha == 0.0:
        assert bool((z_pol.grad == 0).all())


@given(logit_pairs(), alphas, st.data())
def test_shared_argmax_is_kept(pair, alpha, data):
    """If π_θ and π_ref have the same (strict) argmax a, π_mix has it too."""
    z_pol, z_ref = pair
    vocab = z_pol.shape[1]
    a = data.draw(st.integers(0, vocab - 1))
    z_pol, z_ref = z_pol.clone(), z_ref.clone()
    z_pol[:, a] = z_pol.max(-1).values + 1.0
    z_ref[:, a] = z_ref.max(-1).values + 1.0
    assert bool((mix(alpha, z_pol, z_ref).argmax(-1) == a).all())


@given(logit_pairs(min_rows=2), alphas, st.randoms())
def test_rows_are_independent(pair, alpha, rnd):
    """Mixing is row-wise: permuting rows commutes with it."""
    z_pol, z_ref = pair
    perm = list(range(z_pol.shape[0]))
    rnd.shuffle(perm)
    idx = torch.tensor(perm)
    torch.testing.assert_close(
        mix(alpha, z_pol[idx], z_ref[idx]), mix(alpha, z_pol, z_ref)[idx], atol=0, rtol=0
    )


@given(logit_pairs(), st.floats(0.01, 0.99), st.data())
def test_support_is_the_intersection(pair, alpha, data):
    """For α ∈ (0, 1), π_mix(a) = 0 exactly where π_θ(a) = 0 or π_ref(a) = 0 (−inf masking)."""
    z_pol, z_ref = (z.clone() for z in pair)
    vocab = z_pol.shape[1]
    masked_pol = torch.tensor(data.draw(st.lists(st.booleans(), min_size=vocab, max_size=vocab)))
    masked_ref = torch.tensor(data.draw(st.lists(st.booleans(), min_size=vocab, max_size=vocab)))
    assume(not bool((masked_pol | masked_ref).all()))
    z_pol[:, masked_pol] = -math.inf
    z_ref[:, masked_ref] = -math.inf
    p = probs(mix(alpha, z_pol, z_ref))
    assert bool(((p == 0) == (masked_pol | masked_ref)[None, :]).all())


def test_dtype_and_shape_are_kept():
    """bf16 [B, T, V] logits stay bf16 [B, T, V]."""
    z = torch.randn(2, 3, 5).bfloat16()
    out = LogitAverage.default().mix_logits(z, [torch.randn(2, 3, 5).bfloat16()])
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 5)


def test_wrong_references_are_backend_errors():
    """Zero references, or a reference with another vocabulary, raise with the reason."""
    combiner = LogitAverage.default()
    with pytest.raises(BackendError, match="takes 1 reference logits tensor"):
        combiner.mix_logits(torch.zeros(2, 4), [])
    with pytest.raises(BackendError, match="share the policy's tokenizer"):
        combiner.mix_logits(torch.zeros(2, 4), [torch.zeros(2, 5)])


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_passes_the_combiner_contract(alpha):
    """``logit_average`` satisfies ``check_combiner`` at the α extremes and inside."""
    check_combiner(LogitAverage(LogitAverage.Config(alpha=alpha, deploy="policy")))
