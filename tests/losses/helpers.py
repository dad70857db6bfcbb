"""Builders and Hypothesis strategies shared by the policy-loss tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from lmix_core.interfaces.loss import PolicyLoss
from lmix_core.types import LossInputs


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


#: Two rows of 2 and 3 tokens, Â = (1, −0.5), ratios (1.25, 0.8 | 0.8, 1, 2), π_ref ≠ π_θ.
TRL_MASK = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
TRL_LOGP = torch.log(t([[0.5, 0.2, 0.3], [0.4, 0.1, 0.6]]))
TRL_OLD = torch.log(t([[0.4, 0.25, 0.3], [0.5, 0.1, 0.3]]))
TRL_REF = torch.log(t([[0.25, 0.4, 0.1], [0.4, 0.2, 0.5]]))
TRL_ADV = t([[1.0, 1.0, 1.0], [-0.5, -0.5, -0.5]])


def run(
    loss: PolicyLoss,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    weights: torch.Tensor | None = None,
    max_len: int = 8,
    **extra,
) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor | None]:
    """Loss value, metrics, d loss/d logp and (when given) d loss/d entropy; weights default to the loss's own."""
    mask = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask
    weights = loss.token_weights(mask, max_len=max_len) if weights is None else weights
    leaf = logp.clone().requires_grad_(True)
    entropy = extra.pop("entropy", None)
    ent_leaf = None if entropy is None else entropy.clone().requires_grad_(True)
    out = loss(
        LossInputs(
            logp=leaf,
            old_logp=old_logp,
            advantages=advantages,
            mask=mask,
            token_weights=weights,
            entropy=ent_leaf,
            **extra,
        )
    )
    wrt = [leaf] + ([ent_leaf] if ent_leaf is not None else [])
    grads = torch.autograd.grad(out.loss, wrt, allow_unused=True)
    g_logp = torch.zeros_like(leaf) if grads[0] is None else grads[0]
    g_ent = None if ent_leaf is None else (torch.zeros_like(ent_leaf) if grads[1] is None else grads[1])
    return out.loss.detach(), dict(out.metrics), g_logp, g_ent


@st.composite
def token_batches(draw, max_rows: int = 4, max_len: int = 5, spread: float = 1.0, seq_adv: bool = False):
    """(logp, old_logp, advantages, mask): log-probs in [−4, 0], log-ratios within ±spread, random masks."""
    n = draw(st.integers(1, max_rows))
    s = draw(st.integers(1, max_len))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    logp = -4.0 * torch.rand(n, s, generator=gen)  # [N, S]
    old_logp = logp + spread * (2 * torch.rand(n, s, generator=gen) - 1)  # [N, S]
    if seq_adv:
        adv = torch.randn(n, 1, generator=gen).expand(n, s).clone()  # [N, S]
    else:
        adv = torch.randn(n, s, generator=gen)  # [N, S]
    lengths = torch.randint(1, s + 1, (n,), generator=gen)  # [N]
    mask = torch.arange(s)[None, :] < lengths[:, None]  # [N, S]
    return logp, old_logp, adv, mask
