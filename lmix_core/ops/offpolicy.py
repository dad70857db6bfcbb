"""LUFFY's policy shaping for off-policy (forced demonstration) tokens (Yan et al., arXiv 2504.14945).

Off-policy tokens were not sampled from the behaviour policy, so the PPO ratio against ``π_old`` is meaningless for
them. LUFFY takes the behaviour probability as 1, drops the clip and reshapes the likelihood:

    ℓ = −Â · f(p),   f(p) = p / (p + γ),   p = π_θ(token) = exp(logp)

so ∇ℓ = −Â · γ p / (p + γ)² · ∇log p, which boosts low-probability demonstration tokens relative to plain
``p · ∇log p``. LUFFY's released scripts use γ = 0.1 (``p_div_p_0.1``). f is increasing, f(1) = 1 / (1 + γ), and
γ·f(p) → p as γ → ∞.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shaping(p: Tensor, gamma: float) -> Tensor:
    """``f(p) = p / (p + γ)``, elementwise."""
    return p / (p + gamma)  # [N, S]


def shaped_tokens(mask: Tensor, offpolicy: Tensor | None, gamma: float | None) -> Tensor:
    """Tokens that take LUFFY's shaped loss: off-policy tokens in the mask, when γ is set.

    Args:
        mask: ``[N, S]`` bool loss mask.
        offpolicy: ``[N, S]`` bool forced tokens, or None.
        gamma: the shaping constant, or None (off-policy tokens then behave like every other token).

    Returns:
        ``[N, S]`` bool.
    """
    if offpolicy is None or gamma is None:
        return torch.zeros_like(mask, dtype=torch.bool)  # [N, S]
    return offpolicy.to(torch.bool) & mask  # [N, S]


def apply_shaping(
    pg_loss: Tensor, *, logp: Tensor, advantages: Tensor, shaped: Tensor, gamma: float | None
) -> Tensor:
    """Replace the per-token policy loss by ``−Â · f(exp(logp))`` on ``shaped`` tokens.

    Args:
        pg_loss: per-token loss of the ordinary (on-policy) objective. Shape: ``[N, S]``.
        logp: log π_θ with gradient. Shape: ``[N, S]``.
        advantages: Â. Shape: ``[N, S]``.
        shaped: bool tokens to shape (from :func:`shaped_tokens`). Shape: ``[N, S]``.
        gamma: γ; unused when ``shaped`` is all False.

    Returns:
        ``[N, S]`` per-token loss.
    """
    if gamma is None:
        return pg_loss
    safe_logp = torch.where(shaped, logp, torch.zeros_like(logp))  # [N, S]
    off = -advantages * shaping(torch.exp(safe_logp), gamma)  # [N, S]
    return torch.where(shaped, off, pg_loss)  # [N, S]
