"""Unclipped policy gradient as HPT and LUFFY use it (HPT, arXiv 2509.04419; LUFFY, arXiv 2504.14945)."""

from __future__ import annotations

import math

import torch
from hypothesis import given

from lmix_core.config import build
from lmix_core.losses.pg import PG
from lmix_core.ops.aggregation import aggregation_weights

from .helpers import run, t, token_batches


def pg(**kw) -> PG:
    return PG(build(PG.Config, kw))


def test_ratio_form_by_hand():
    """Â = (2, −1), ρ = (1, 2), token-mean: ℓ = (−2, 2) → 0; ∇ = −Â·ρ·w = (−1, 1)."""
    loss, metrics, grad, _ = run(PG.default(), t([[0.0, math.log(2.0)]]), t([[0.0, 0.0]]), t([[2.0, -1.0]]))
    assert abs(float(loss)) < 1e-6
    assert math.isclose(float(metrics["ratio_mean"]), 1.5, abs_tol=1e-6)
    torch.testing.assert_close(grad, t([[-1.0, 1.0]]), rtol=0, atol=1e-6)


def test_logp_form_by_hand():
    """Â = (2, −1), log π = (log 0.5, log 0.25): ℓ = −Â·log π = (1.3862944, −1.3862944) → 0; ∇ = −Â·w."""
    loss, _, grad, _ = run(pg(form="logp"), torch.log(t([[0.5, 0.25]])), t([[0.0, 0.0]]), t([[2.0, -1.0]]))
    assert abs(float(loss)) < 1e-6
    torch.testing.assert_close(grad, t([[-1.0, 0.5]]), rtol=0, atol=1e-6)


def test_luffy_aggregation_by_hand():
    """HPT/LUFFY's Σ m ℓ / L_max: rows of 2 and 1 tokens at ρ = 1 with Â = (1 | −2), L = 4 → (−1 −1 + 2)/4 = 0."""
    mask = torch.tensor([[True, True], [True, False]])
    loss, _, grad, _ = run(
        pg(agg="token-sum-norm"),
        t([[0.0, 0.0], [0.0, 0.0]]),
        t([[0.0, 0.0], [0.0, 0.0]]),
        t([[1.0, 1.0], [-2.0, 0.0]]),
        mask,
        max_len=4,
    )
    assert abs(float(loss)) < 1e-7
    torch.testing.assert_close(grad, t([[-0.25, -0.25], [0.5, 0.0]]), rtol=0, atol=1e-7)


@given(token_batches(spread=3.0))
def test_never_clipped(batch):
    """Whatever the ratio, the gradient is −Â·ρ·w (no clip region)."""
    logp, old, adv, mask = batch
    _, _, grad, _ = run(PG.default(), logp, old, adv, mask)
    w = aggregation_weights(mask, "token-mean", 8)
    torch.testing.assert_close(grad, -adv * torch.exp(logp - old) * w, rtol=1e-5, atol=1e-6)


@given(token_batches())
def test_forms_agree_at_first_inner_step(batch):
    """At ρ = 1 both forms have the gradient −Â·w."""
    logp, _, adv, mask = batch
    a = run(PG.default(), logp, logp, adv, mask)[2]
    b = run(pg(form="logp"), logp, logp, adv, mask)[2]
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_offpolicy_tokens_by_hand():
    """LUFFY's shaping on a forced token: p = 0.25, γ = 0.1, Â = 1 → ℓ = −0.25/0.35 = −0.7142857 (sum-norm, L = 1)."""
    loss, _, grad, _ = run(
        pg(agg="token-sum-norm"),
        torch.log(t([[0.25]])),
        t([[-9.0]]),
        t([[1.0]]),
        max_len=1,
        offpolicy=torch.tensor([[True]]),
        offpolicy_gamma=0.1,
    )
    assert math.isclose(float(loss), -0.25 / 0.35, abs_tol=1e-6)
    # ∇_logp = −Â·γ p/(p+γ)² = −0.1·0.25/0.1225 = −0.2040816
    assert math.isclose(float(grad), -0.2040816, abs_tol=1e-6)
