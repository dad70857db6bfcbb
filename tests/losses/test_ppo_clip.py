"""PPO/GRPO/DAPO clipped surrogate (arXiv 1707.06347, 2402.03300, 2503.14476; verl/TRL expressions)."""

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
from lmix_core.types import LossInputs

from .helpers import TRL_ADV, TRL_LOGP, TRL_MASK, TRL_OLD, TRL_REF, run, t, token_batches


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
    """verl's ``compute_policy_loss_vanilla`` per-token expression, then token-mean."""
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


@given(token_batches(spread=1.0), st.floats(0.0, 0.4), st.floats(0.0, 0.4), st.floats(1.5, 4.0))
def test_dual_clip_is_trl_delta(batch, eps_low, eps_high, delta):
    """TRL 1.16's two-sided clipping ``delta`` (``coef_1.clamp(max=delta)`` before the min), written out from its
    ``_compute_loss`` with ``loss_type="dapo"``, is ``dual_clip = delta`` for delta > 1 + ε_high."""
    logp, old, adv, mask = batch
    assume(delta > 1 + eps_high)
    loss, _, grad, _ = run(ppo(eps_low=eps_low, eps_high=eps_high, dual_clip=delta), logp, old, adv, mask)
    leaf = logp.clone().requires_grad_(True)
    coef_1 = torch.exp(leaf - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(torch.clamp(coef_1, max=delta) * adv, coef_2 * adv)
    m = mask.float()
    ref = (per_token * m).sum() / m.sum()
    (ref_grad,) = torch.autograd.grad(ref, [leaf])
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@given(
    token_batches(spread=0.5), st.floats(0.05, 0.4), st.floats(0.0, 0.2), st.sampled_from(["none", "ratio"])
)
def test_symmetric_clip_is_trl_grpo(batch, eps, beta, importance):
    """ε_low = ε_high with k3 and seq-mean-token-mean over all rows equals TRL 1.16's ``grpo`` loss, written out
    from its ``_compute_loss`` lines: ``kl_importance = "ratio"`` is ``use_bias_correction_kl=True`` (the default),
    ``"none"`` is ``False``."""
    logp, old, adv, mask = batch
    ref_logp = logp + 0.3
    loss, _, _, _ = run(
        ppo(
            eps_low=eps,
            eps_high=eps,
            kl_coef=beta,
            kl_importance=importance,
            agg="seq-mean-token-mean",
            agg_rows="all",
        ),
        logp,
        old,
        adv,
        mask,
        ref_logp=ref_logp,
    )
    coef_1 = torch.exp(logp - old)
    per_token_kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
    if importance == "ratio":
        per_token_kl = per_token_kl * coef_1
    per_token = -torch.minimum(coef_1 * adv, torch.clamp(coef_1, 1 - eps, 1 + eps) * adv)
    per_token = per_token + beta * per_token_kl
    m = mask.float()
    expected = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


#: (kl_importance, old log-probs) -> (loss, d loss / d logp) from TRL 1.16's own ``GRPOTrainer._compute_loss``
#: (``loss_type="grpo"``, ε = 0.2, β = 0.1, token-level ratio, one process, no accumulation), called on these
#: inputs with ``use_bias_correction_kl`` True ("ratio") and False ("none").
TRL_GRPO = {
    ("ratio", "old"): (-0.16552433, [[0.02166085, -0.21386293, 0.0], [0.06666667, 0.07178088, 0.17274407]]),
    ("none", "old"): (-0.16545817, [[0.0125, -0.225, 0.0], [0.06666667, 0.06666667, 0.16944447]]),
    ("ratio", "logp"): (-0.23212487, [[-0.23267132, -0.26732868, 0.0], [0.08333334, 0.07178088, 0.08637203]]),
    ("none", "logp"): (-0.23212487, [[-0.2375, -0.275, 0.0], [0.08333334, 0.06666667, 0.08611111]]),
}


@pytest.mark.parametrize(("importance", "old"), list(TRL_GRPO))
def test_trl_grpo_values(importance, old):
    """TRL 1.16's GRPO loss and gradient, both KL weightings, off-policy (ρ ≠ 1) and at ρ = 1, where only the
    gradient differs: the ratio's gradient adds k3·∇log π."""
    loss = ppo(kl_coef=0.1, kl_importance=importance, agg="seq-mean-token-mean", agg_rows="all")
    value, _, grad, _ = run(
        loss, TRL_LOGP, TRL_OLD if old == "old" else TRL_LOGP, TRL_ADV, TRL_MASK, ref_logp=TRL_REF
    )
    expected_loss, expected_grad = TRL_GRPO[importance, old]
    torch.testing.assert_close(value, torch.tensor(expected_loss), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, t(expected_grad), rtol=1e-5, atol=1e-7)


def test_importance_weighted_kl_by_hand():
    """One token, Â = 0, π_θ = 0.5, π_old = π_ref = 0.25 (ρ = 2): k3 = 0.5 − log 0.5 − 1 = 0.1931472.
    kl_importance = "ratio": ℓ = 0.1·ρ·k3 = 0.0386294, ∇ = 0.1·(ρ·k3 + ρ·(1 − π_ref/π_θ)) = 0.1386294;
    "none": ℓ = 0.0193147, ∇ = 0.1·(1 − 0.5) = 0.05."""
    logp, quarter = torch.log(t([[0.5]])), torch.log(t([[0.25]]))
    value, metrics, grad, _ = run(
        ppo(kl_coef=0.1, kl_importance="ratio"), logp, quarter, t([[0.0]]), ref_logp=quarter
    )
    assert math.isclose(float(value), 0.1 * 2 * 0.1931472, abs_tol=1e-6)
    assert math.isclose(float(grad), 0.1 * (2 * 0.1931472 + 2 * 0.5), abs_tol=1e-6)
    assert math.isclose(float(metrics["kl"]), 0.1931472, abs_tol=1e-6)  # the metric is the plain estimate
    value, _, grad, _ = run(ppo(kl_coef=0.1), logp, quarter, t([[0.0]]), ref_logp=quarter)
    assert math.isclose(float(value), 0.1 * 0.1931472, abs_tol=1e-6)
    assert math.isclose(float(grad), 0.05, abs_tol=1e-6)


def _kl_term_gradient(
    estimator: str, importance: str, theta: torch.Tensor, ref: torch.Tensor
) -> torch.Tensor:
    """∇_θ of the loss's KL term over every token of a V-token vocabulary, each weighted by sg[π_θ(a)]: the
    exact on-policy expectation (π_old = π_θ, Â = 0, kl_coef = 1)."""
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)[:, None]  # [V, 1]: one row per token a
    mask = torch.ones_like(logp, dtype=torch.bool)  # [V, 1]
    loss = ppo(kl_coef=1.0, kl_estimator=estimator, kl_importance=importance)
    out = loss(
        LossInputs(
            logp=logp,
            old_logp=logp.detach(),
            advantages=torch.zeros_like(logp),
            mask=mask,
            token_weights=logp.exp().detach(),
            ref_logp=ref[:, None],
        )
    )
    (grad,) = torch.autograd.grad(out.loss, [theta])
    return grad


def test_kl_term_gradient_directions():
    """Through ppo_clip on-policy: k3 pulls along ∇KL(π_ref‖π_θ) (forward), k3 weighted by the ratio (TRL 1.16's
    default), k3+ and k2 along ∇KL(π_θ‖π_ref) (reverse), k1 not at all; the two directions differ."""
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn(6, generator=gen)
    ref = torch.log_softmax(torch.randn(6, generator=gen), -1)
    th = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(th, -1)
    (g_rev,) = torch.autograd.grad((logp.exp() * (logp - ref)).sum(), [th])
    th = theta.clone().requires_grad_(True)
    (g_fwd,) = torch.autograd.grad((ref.exp() * (ref - torch.log_softmax(th, -1))).sum(), [th])
    assert float((g_rev - g_fwd).abs().max()) > 1e-2
    close = {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(_kl_term_gradient("k3", "none", theta, ref), g_fwd, **close)
    torch.testing.assert_close(_kl_term_gradient("k3", "ratio", theta, ref), g_rev, **close)
    torch.testing.assert_close(_kl_term_gradient("k1", "ratio", theta, ref), g_rev, **close)
    torch.testing.assert_close(_kl_term_gradient("k3+", "none", theta, ref), g_rev, **close)
    torch.testing.assert_close(_kl_term_gradient("k2", "none", theta, ref), g_rev, **close)
    torch.testing.assert_close(_kl_term_gradient("k1", "none", theta, ref), torch.zeros(6), **close)


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
        {"kl_importance": "ppo"},
        {"agg_rows": "some"},
    ):
        with pytest.raises(ConfigError):
            build(PPOClip.Config, bad)
