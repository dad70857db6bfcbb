"""GSPO's sequence-level ratio ("Group Sequence Policy Optimization", arXiv 2507.18071; verl's expression)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.config import build
from lmix_core.losses.gspo import GSPO, sequence_log_ratio
from lmix_core.losses.ppo_clip import PPOClip

from .helpers import TRL_ADV, TRL_LOGP, TRL_MASK, TRL_OLD, TRL_REF, run, t, token_batches


def gspo(**kw) -> GSPO:
    return GSPO(build(GSPO.Config, kw))


def test_by_hand():
    """Three rows, ε = (3e-4, 4e-4), seq-mean-token-mean (B' = 3).

    row 0: log ρ = (0.1, −0.3), Â = 1 → s = e^−0.1 = 0.9048374 < 1: unclipped, ℓ = −0.9048374
    row 1: log ρ = 0.2, Â = −1 → s = 1.2214028 > 1: unclipped for Â < 0, ℓ = 1.2214028
    row 2: log ρ = (0.05, 0.05), Â = 1 → s = 1.0512711 > 1.0004: clipped, ℓ = −1.0004
    loss = (−0.9048374 + 1.2214028 − 1.0004)/3 = −0.2279449
    """
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    logp = t([[-1.0, -1.0], [-1.0, 0.0], [-1.0, -1.0]])
    old = logp - t([[0.1, -0.3], [0.2, 0.0], [0.05, 0.05]])
    adv = t([[1.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    loss, metrics, grad, _ = run(GSPO.default(), logp, old, adv, mask)
    assert math.isclose(float(loss), -0.2279449, abs_tol=1e-6)
    assert math.isclose(float(metrics["clip_frac"]), 2 / 5, abs_tol=1e-6)
    assert math.isclose(
        float(metrics["ratio_mean"]), (2 * 0.9048374 + 1.2214028 + 2 * 1.0512711) / 5, abs_tol=1e-6
    )
    # ∂/∂logp_t of −Â·s_{i,t}·w: row 0 −0.9048374/6 per token; row 1 +1.2214028/3; row 2 clipped → 0
    expected = t([[-0.9048374 / 6, -0.9048374 / 6], [1.2214028 / 3, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-6)


@given(token_batches())
def test_geometric_mean_of_token_ratios(batch):
    """s_i = (Π_t ρ_{i,t})^{1/|y_i|}."""
    logp, old, _, mask = batch
    s = torch.exp(sequence_log_ratio(logp.double(), old.double(), mask))[:, 0]
    ratios = torch.exp(logp.double() - old.double())
    for i in range(mask.shape[0]):
        r = ratios[i][mask[i]]
        assert math.isclose(float(s[i]), float(r.prod() ** (1 / r.numel())), rel_tol=1e-9)


@given(token_batches(), st.floats(0.5, 2.0))
def test_uniform_ratio(batch, c):
    """Every token ratio equal to c gives s_i = c."""
    logp, _, _, mask = batch
    s = torch.exp(sequence_log_ratio(logp.double(), logp.double() - math.log(c), mask))[:, 0]
    torch.testing.assert_close(s, torch.full_like(s, c), rtol=1e-9, atol=0)


def naive_gspo(logp, old, adv_seq, mask, eps_low, eps_high):
    """The paper's sequence objective: s_i with gradient through every token, mean over sequences."""
    m = mask.double()
    s = torch.exp(((logp - old) * m).sum(-1) / m.sum(-1))
    per_seq = torch.maximum(-adv_seq * s, -adv_seq * torch.clamp(s, 1 - eps_low, 1 + eps_high))
    return per_seq.mean()


@given(token_batches(seq_adv=True, spread=0.01), st.floats(1e-4, 0.05), st.floats(1e-4, 0.05))
def test_token_form_equals_sequence_form(batch, eps_low, eps_high):
    """GSPO-token (verl's stop-gradient form) has the value and the gradient of the sequence-level objective."""
    logp, old, adv, mask = batch
    loss, _, grad, _ = run(gspo(eps_low=eps_low, eps_high=eps_high), logp, old, adv, mask)
    leaf = logp.double().clone().requires_grad_(True)
    ref = naive_gspo(leaf, old.double(), adv[:, 0].double(), mask, eps_low, eps_high)
    (ref_grad,) = torch.autograd.grad(ref, [leaf])
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


@given(token_batches(max_len=1, spread=0.5), st.floats(0.0, 0.3), st.floats(0.0, 0.3))
def test_single_token_responses_are_token_level_ppo(batch, eps_low, eps_high):
    """With one-token responses the sequence ratio is the token ratio: GSPO = PPO clip (same ε, same agg)."""
    logp, old, adv, mask = batch
    a = run(gspo(eps_low=eps_low, eps_high=eps_high), logp, old, adv, mask)
    b = run(
        PPOClip(
            build(PPOClip.Config, {"eps_low": eps_low, "eps_high": eps_high, "agg": "seq-mean-token-mean"})
        ),
        logp,
        old,
        adv,
        mask,
    )
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=1e-6)


def test_log_ratio_clamped_at_max():
    """log s is clamped at log_ratio_max = 10: a uniform log ratio of 12 reports s = e^10."""
    _, metrics, _, _ = run(GSPO.default(), t([[0.0, 0.0]]), t([[-12.0, -12.0]]), t([[-1.0, -1.0]]))
    assert math.isclose(float(metrics["ratio_mean"]), math.exp(10.0), rel_tol=1e-5)


def test_offpolicy_tokens_leave_the_sequence_ratio():
    """With γ set, forced tokens are shaped and excluded from s_i: on tokens log ρ = (0.2, 0.4) → s = e^0.3."""
    logp = t([[-1.0, -1.0, -1.0]])
    old = logp - t([[-5.0, 0.2, 0.4]])
    off = torch.tensor([[True, False, False]])
    _, metrics, _, _ = run(
        GSPO.default(), logp, old, t([[1.0, 1.0, 1.0]]), offpolicy=off, offpolicy_gamma=0.1
    )
    assert math.isclose(float(metrics["ratio_mean"]), math.exp(0.3), rel_tol=1e-6)


#: (kl_importance, old log-probs) -> (loss, d loss / d logp) from TRL 1.16's own ``GRPOTrainer._compute_loss``
#: (``loss_type="grpo"``, ``importance_sampling_level="sequence"``, ε = 0.2, β = 0.1, one process) on the inputs
#: of ``helpers.TRL_*``, with ``use_bias_correction_kl`` True ("ratio") and False ("none").
TRL_SEQUENCE = {
    ("ratio", "old"): (-0.18881139, [[-0.23124997, -0.26874998, 0.0], [0.09956285, 0.08006940, 0.10281176]]),
    ("none", "old"): (-0.18972301, [[-0.23749998, -0.275, 0.0], [0.09746727, 0.08080060, 0.10024504]]),
    ("ratio", "logp"): (-0.23212487, [[-0.23124999, -0.26875001, 0.0], [0.08512504, 0.06845837, 0.08790281]]),
    ("none", "logp"): (-0.23212487, [[-0.2375, -0.275, 0.0], [0.08333334, 0.06666667, 0.08611111]]),
}


@pytest.mark.parametrize(("importance", "old"), list(TRL_SEQUENCE))
def test_trl_sequence_level_values(importance, old):
    """TRL 1.16's sequence-level GRPO (GSPO) with a KL term: the KL's importance weight is s_i, with gradient
    through every token of the row."""
    loss = gspo(eps_low=0.2, eps_high=0.2, kl_coef=0.1, kl_importance=importance, agg_rows="all")
    value, _, grad, _ = run(
        loss, TRL_LOGP, TRL_OLD if old == "old" else TRL_LOGP, TRL_ADV, TRL_MASK, ref_logp=TRL_REF
    )
    expected_loss, expected_grad = TRL_SEQUENCE[importance, old]
    torch.testing.assert_close(value, torch.tensor(expected_loss), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, t(expected_grad), rtol=1e-5, atol=1e-7)
