"""``entropy_gated``: the gate α(H), the mixture, gradients and invariances."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.config import build
from lmix_core.errors import ConfigError
from lmix_example.entropy_gated import EntropyGated


def test_uniform_policy_gets_alpha_min_by_hand():
    """z_θ = [0, 0] is uniform: H = log 2, H / log V = 1, α = α_min = 0.5, so z = 0.5 · z_ref."""
    g = EntropyGated.default()
    z = g.mix_logits(torch.zeros(1, 2), [torch.tensor([[2.0, -4.0]])])  # [1, 2]
    torch.testing.assert_close(z, torch.tensor([[1.0, -2.0]]), atol=1e-6, rtol=1e-6)


def test_confident_policy_keeps_alpha_max_by_hand():
    """z_θ = [50, −50] has H ≈ 0, so α ≈ α_max = 1 and the policy's logits pass through."""
    g = EntropyGated.default()
    zp = torch.tensor([[50.0, -50.0]])  # [1, 2]
    z = g.mix_logits(zp, [torch.tensor([[-3.0, 7.0]])])  # [1, 2]
    torch.testing.assert_close(z, zp, atol=1e-4, rtol=1e-4)


def test_alpha_by_hand_for_a_known_entropy():
    """V = 4 with p = (1/2, 1/2, 0, 0): H = log 2, H / log 4 = 1/2, α = 0.9 − (0.9 − 0.3) · 1/2 = 0.6."""
    g = EntropyGated(EntropyGated.Config(alpha_max=0.9, alpha_min=0.3))
    zp = torch.tensor([[0.0, 0.0, -math.inf, -math.inf]])  # [1, 4]
    torch.testing.assert_close(g.alpha(zp), torch.tensor([[0.6]]), atol=1e-6, rtol=1e-6)


@given(
    seed=st.integers(0, 2**16),
    shift=st.floats(-50, 50),
    alpha_max=st.floats(0.0, 1.0),
    frac=st.floats(0.0, 1.0),
)
def test_alpha_bounds_and_shift_invariance(seed, shift, alpha_max, frac):
    """α stays in [α_min, α_max]; adding a constant to either input leaves log softmax(z) unchanged."""
    g = EntropyGated(EntropyGated.Config(alpha_max=alpha_max, alpha_min=alpha_max * frac))
    gen = torch.Generator().manual_seed(seed)
    zp = torch.randn(3, 5, 7, generator=gen) * 3  # [N, S, V]
    zr = torch.randn(3, 5, 7, generator=gen) * 3  # [N, S, V]
    a = g.alpha(zp)  # [N, S, 1]
    assert bool((a >= alpha_max * frac - 1e-6).all()) and bool((a <= alpha_max + 1e-6).all())
    base = torch.log_softmax(g.mix_logits(zp, [zr]), -1)  # [N, S, V]
    moved = torch.log_softmax(g.mix_logits(zp + shift, [zr - shift]), -1)  # [N, S, V]
    torch.testing.assert_close(moved, base, atol=1e-4, rtol=1e-4)


def test_gradient_flows_to_policy_only_through_detached_alpha():
    """d Σz / d z_θ = α (the gate is detached) and the reference gets no gradient."""
    g = EntropyGated.default()
    zp = torch.randn(2, 3, 5, requires_grad=True)  # [N, S, V]
    zr = torch.randn(2, 3, 5, requires_grad=True)  # [N, S, V]
    g.mix_logits(zp, [zr]).sum().backward()
    torch.testing.assert_close(zp.grad, g.alpha(zp).expand(2, 3, 5), atol=1e-6, rtol=1e-6)
    assert zr.grad is None


def test_dtype_and_shape_are_kept():
    """bfloat16 logits come back in bfloat16 with the same shape."""
    g = EntropyGated.default()
    zp, zr = torch.randn(2, 4, 6).bfloat16(), torch.randn(2, 4, 6).bfloat16()  # [N, S, V]
    z = g.mix_logits(zp, [zr])  # [N, S, V]
    assert z.dtype == torch.bfloat16 and z.shape == zp.shape and bool(torch.isfinite(z).all())


def test_one_reference_is_required():
    """num_references is 1; a call with another count or a shape mismatch is refused."""
    g = EntropyGated.default()
    assert g.num_references == 1
    with pytest.raises(ValueError, match="exactly 1 reference"):
        g.mix_logits(torch.zeros(1, 3), [])
    with pytest.raises(ValueError, match="do not match"):
        g.mix_logits(torch.zeros(1, 3), [torch.zeros(1, 4)])


def test_config_validation():
    """α bounds lie in [0, 1] and α_min ≤ α_max."""
    with pytest.raises(ConfigError, match="'alpha_min' must be <= alpha_max=0.5"):
        build(EntropyGated.Config, {"alpha_max": 0.5, "alpha_min": 0.6})
    with pytest.raises(ConfigError, match="'alpha_max' must be in \\[0, 1\\]"):
        build(EntropyGated.Config, {"alpha_max": 1.5})


def test_masked_logits_never_give_nan():
    """−inf logits stay −inf or are dropped with a zero weight; no NaN at α = 1 or α = 0."""
    g = EntropyGated(EntropyGated.Config(alpha_max=1.0, alpha_min=0.0))
    confident = torch.tensor([[60.0, -60.0, -60.0]])  # [1, 3], α ≈ 1
    masked_ref = torch.tensor([[0.0, -math.inf, 1.0]])  # [1, 3]
    z = g.mix_logits(confident, [masked_ref])  # [1, 3]
    assert not bool(torch.isnan(z).any())
    uniform = torch.tensor([[0.0, 0.0, -math.inf]])  # [1, 3], H = log 2 < log 3, so 0 < α < 1
    z = g.mix_logits(uniform, [torch.zeros(1, 3)])  # [1, 3]
    assert not bool(torch.isnan(z).any()) and z[0, 2] == -math.inf
