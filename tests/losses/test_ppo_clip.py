"""PPO/GRPO/DAPO clipped surrogate (algorithm note §7, §8 "GRPO", "DAPO", §9 verl/TRL expressions)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from lmix_core.config import build
from lmix_core.errors import ConfigError, LmixError
from lmix_core.losses.ppo_clip import PPOClip
from lmix_core.ops.aggregation import aggregation_weights

from .helpers import run, t, token_batches


def ppo(**kw) -> PPOClip:
    return PPOClip(build(PPOClip.Config, kw))


def test_by_hand():
    """ρ = (1.5, 0.9, 0.5), Â = (1, 1, −1), ε = 0.2, token-mean: ℓ = (−1.2, −0.9, 0.8) → −1.3/3."""
    old = t([[0.0, 0.0, 0.0]])
    logp = torch.log(t([[1.5, 0.9, 0.5]]))
    adv = t([[1.0, 1.0, -1.0]])
    loss, metrics, grad, _ = run(PPOClip.default(), logp, old, adv)
    # token 1: max(−1.5, −1.2) = −1.2 (clipped above); token 2: −0.9 (inside); token 3: max(0.5, 0.8) = 0.8 (clipped)
    assert math.isclose(float(loss), -1.3 / 3, abs_tol=1e-6)
    assert math.isclose(float(metrics["clip_frac"]), 2 / 3, abs_tol=1e-6)
    assert math.isclose(float(metrics["ratio_mean"]), (1.5 + 0.9 + 0.5) / 3, abs_tol=1e-6)
    # only the unclipped token has gradient: d(−Â ρ)/d logp = −Â ρ · w = −0.9/3
    torch.testing.assert_close(grad, t([[0.0, -0.3, 0.0]]), rtol=0, atol=1e-6)


def test_dual_clip_by_hand():
    """Â = −1, ρ = 4, c = 3: max(4, 1.2) = 4 is capped at −Â·c = 3 with zero gradient; ρ = 2 stays 2."""
    logp = torch.log(t([[4.0, 2.0]]))
    loss, metrics, grad, _ = run(ppo(dual_clip=3.0), logp, t([[0.0, 0.0]]), t([[-1.0, -1.0]]))
    assert math.isclose(float(loss), (3.0 + 2.0) / 2, abs_tol=1e-6)
    assert math.isclose(float(metrics["clip_frac_lower"]), 0.5, abs_tol=1e-6)
    torch.testing.assert_close(grad, t([[0.0, 1.0]]), rtol=0, atol=1e-6)  # d(|Â|ρ)/dlogp · w = 2 · 0.5


def test_kl_and_entropy_by_hand():
    """k3 with kl_coef 0.1 and an entropy bonus 0.01 at ρ = 1: ℓ = −Â + 0.1·k3 − 0.01·H, token-mean."""
    logp = torch.log(t([[0.5, 0.5]]))
    ref = torch.log(t([[0.25, 0.5]]))
    ent = t([[1.0, 3.0]])
    loss, metrics, grad, g_ent = run(
        ppo(kl_coef=0.1, entropy_coef=0.01), logp, logp, t([[1.0, 2.0]]), ref_logp=ref, entropy=ent
    )
    # k3 = (0.5 − log 0.5 − 1, 0) = (0.1931472, 0); ℓ = (−1 + 0.0193147 − 0.01, −2 − 0.03) → mean −1.5103426
    assert math.isclose(float(loss), (-1 + 0.01931472 - 0.01 - 2 - 0.03) / 2, abs_tol=1e-6)
    assert math.isclose(float(metrics["kl"]), 0.1931472 / 2, abs_tol=1e-6)
    assert math.isclose(float(metrics["entropy"]), 2.0, abs_tol=1e-6)
    # d k3/d logp = 1 − π_ref/π_θ = 0.5 on token 1: grad = (−1 + 0.1·0.5)/2, −2/2
    torch.testing.assert_close(grad, t([[-0.475, -1.0]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(g_ent, t([[-0.005, -0.005]]), rtol=0, atol=1e-7)


def test_offpolicy_tokens_by_hand():
    """An off-policy token with p = 0.5, γ = 0.1, Â = 2 costs −2·0.5/0.6 whatever its old log-prob."""
    logp = torch.log(t([[0.5, 0.5]]))
    old = t([[-5.0, math.log(0.5)]])
    off = torch.tensor([[True, False]])
    loss, metrics, _, _ = run(
        PPOClip.default(), logp, old, t([[2.0, 2.0]]), offpolicy=off, offpolicy_gamma=0.1
    )
    assert math.isclose(float(loss), (-2 * 0.5 / 0.6 - 2.0) / 2, abs_tol=1e-6)
    assert math.isclose(float(metrics["ratio_mean"]), 1.0, abs_tol=1e-6)  # on-policy tokens only


@given(
    st.floats(-3, 3).filter(lambda a: abs(a) > 1e-3),
    st.floats(-1.0, 1.0),
    st.floats(0.0, 0.5),
    st.floats(0.0, 0.5),
    st.one_of(st.none(), st.floats(1.5, 5.0)),
)
def test_clipping_gradient_regions(adv, log_ratio, eps_low, eps_high, dual):
    """Zero gradient for Â > 0 when ρ > 1+ε_h, for Â < 0 when ρ < 1−ε_l or (dual) ρ > c; else −Â·ρ."""
    rho = math.exp(log_ratio)
    edges = [1 + eps_high, 1 - eps_low] + ([dual] if dual else [])
    assume(all(abs(rho - e) > 1e-4 for e in edges))
    loss = ppo(eps_low=eps_low, eps_high=eps_high, dual_clip=dual)
    _, _, grad, _ = run(loss, t([[log_ratio - 1.0]]), t([[-1.0]]), t([[adv]]))
    frozen = (
        (adv > 0 and rho > 1 + eps_high)
        or (adv < 0 and rho < 1 - eps_low)
        or (adv < 0 and dual is not None and rho > dual)
    )
    expected = 0.0 if frozen else -adv * rho
    assert math.isclose(float(grad), expected, rel_tol=1e-5, abs_tol=1e-6)


def verl_vanilla(logp, old, adv, mask, eps_low, eps_high, c):
    """verl's ``compute_policy_loss_vanilla`` per-token expression (note §9), then token-mean."""
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    clip1 = torch.maximum(pg1, pg2)
    pg = torch.where(adv < 0, torch.minimum(-adv * c, clip1), clip1)
    m = mask.float()
    return (pg * m).sum() / m.sum()


@given(token_batches(spread=1.0), st.floats(0.0, 0.4), st.floats(0.0, 0.4), st.floats(1.5, 4.0))
def test_parity_with_verl_vanilla(batch, eps_low, eps_high, c):
    """Value and gradient equal verl's vanilla PPO loss with dual clip and token-mean."""
    logp, old, adv, mask = batch
    loss, _, grad, _ = run(ppo(eps_low=eps_low, eps_high=eps_high, dual_clip=c), logp, old, adv, mask)
    leaf = logp.clone().requires_grad_(True)
    ref = verl_vanilla(leaf, old, adv, mask, eps_low, eps_high, c)
    (ref_grad,) = torch.autograd.grad(ref, [leaf])
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@given(token_batches(spread=0.5), st.floats(0.05, 0.4), st.floats(0.0, 0.2))
def test_symmetric_clip_is_trl_grpo(batch, eps, beta):
    """ε_low = ε_high (DAPO reduced to GRPO) with k3 and seq-mean-token-mean equals TRL's GRPO loss."""
    logp, old, adv, mask = batch
    ref_logp = logp + 0.3
    loss, _, _, _ = run(
        ppo(eps_low=eps, eps_high=eps, kl_coef=beta, agg="seq-mean-token-mean"),
        logp,
        old,
        adv,
        mask,
        ref_logp=ref_logp,
    )
    coef = torch.exp(logp - old)
    per_token = -torch.minimum(coef * adv, torch.clamp(coef, 1 - eps, 1 + eps) * adv)
    per_token = per_token + beta * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
    m = mask.float()
    expected = ((per_token * m).sum(-1) / m.sum(-1)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@given(token_batches(seq_adv=True))
def test_first_inner_step_is_unclipped(batch):
    """At ρ = 1 the clipped loss equals the unclipped −Â·ρ and ∇ = −Â·w (any ε, any agg)."""
    logp, _, adv, mask = batch
    loss = ppo(eps_low=0.0, eps_high=0.0, agg="seq-mean-token-mean")
    value, _, grad, _ = run(loss, logp, logp, adv, mask)
    w = aggregation_weights(mask, "seq-mean-token-mean", 8)
    torch.testing.assert_close(value, (-adv * w).sum(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, -adv * w, rtol=1e-5, atol=1e-6)


def test_log_ratio_clamp():
    """log ρ is clamped at ±log_ratio_clamp before exp: a +50 log-ratio gives ρ = e^20 and stays finite."""
    loss, metrics, grad, _ = run(PPOClip.default(), t([[0.0]]), t([[-50.0]]), t([[-1.0]]))
    assert math.isclose(float(metrics["ratio_mean"]), math.exp(20.0), rel_tol=1e-5)
    assert math.isfinite(float(loss)) and float(grad) == 0.0


def test_requirements_and_validation():
    """kl_coef > 0 needs ref_logp (LmixError without it); bad Config values are ConfigErrors."""
    assert not PPOClip.default().needs_ref_logp and not PPOClip.default().needs_entropy
    kl = ppo(kl_coef=0.1)
    assert kl.needs_ref_logp
    with pytest.raises(LmixError, match="ref_logp"):
        run(kl, t([[0.0]]), t([[0.0]]), t([[1.0]]))
    with pytest.raises(LmixError, match="entropy"):
        run(ppo(entropy_coef=0.01), t([[0.0]]), t([[0.0]]), t([[1.0]]))
    for bad in (
        {"eps_low": 1.0},
        {"dual_clip": 1.0},
        {"kl_estimator": "k4"},
        {"agg": "mean"},
        {"kl_coef": -1},
    ):
        with pytest.raises(ConfigError):
            build(PPOClip.Config, bad)
