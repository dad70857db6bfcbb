"""BNPO: Beta-normalised policy optimisation (Xiao, Zhang & Cao, arXiv 2506.02864), after the official
``compute_bnpo_outcome_advantage`` (changyi7231/BNPO, ``recipe/bnpo/src/bnpo_ray_trainer.py``)."""

from __future__ import annotations

from typing import Literal, final

import attrs
import torch
from torch import Tensor

from lmix_core.errors import LmixError
from lmix_core.interfaces.advantage import AdvantageEstimator, Invariance
from lmix_core.ops.groups import Singleton, grouped, singleton_field
from lmix_core.ops.masked import AllSum, global_sums
from lmix_core.types import AdvantageInputs


def beta_parameters(p: Tensor, *, all_sum: AllSum | None = None) -> tuple[Tensor, Tensor]:
    r"""BNPO's normaliser parameters from the questions' mean rewards.

    Method-of-moments Beta(a, b) fit of ``p`` (μ, σ² = mean and *unbiased* variance over questions, every
    data-parallel rank's with ``all_sum``), then the variance-optimal normaliser parameters:

        a = (μ(1−μ)/σ² − 1)·μ,   b = (μ(1−μ)/σ² − 1)·(1−μ),   α = max(1, 1 + a/3),   β = max(1, 1 + b/3)

    With fewer than 2 questions the official code sets μ = 0, σ² = 1, which gives α = β = 1. With σ² = 0 (every
    question has the same p) the fit is degenerate (the official code produces NaN); lmix then also uses
    α = β = 1 (REINFORCE with the group-mean baseline).

    Args:
        p: ``[Q]`` float64 per-question mean rewards in [0, 1].
        all_sum: sum over data-parallel ranks (the fit then spans every rank's questions); None: these only.

    Returns:
        ``(α, β)``, 0-dim float64 tensors, both >= 1.
    """
    one = torch.ones((), dtype=torch.float64, device=p.device)  # []
    q, total = global_sums(all_sum, torch.tensor(p.numel(), dtype=torch.float64), p.sum())  # [], []
    if q < 2:
        return one, one
    mu = total / q  # []
    (ss,) = global_sums(all_sum, ((p - mu) ** 2).sum())  # []
    var = ss / (q - 1)  # []
    if not bool(var > 0):
        return one, one
    k = mu * (1 - mu) / var - 1  # []
    alpha = torch.clamp(1 + k * mu / 3, min=1.0)  # []
    beta = torch.clamp(1 + k * (1 - mu) / 3, min=1.0)  # []
    return alpha, beta


def inverse_beta_pdf(p: Tensor, alpha: Tensor, beta: Tensor, max_value: float) -> Tensor:
    r"""``clamp(1 / Beta_pdf(p; α, β), 0, max_value)``, elementwise, exact at the boundaries p ∈ {0, 1}.

    ``log pdf = (α−1)·log p + (β−1)·log(1−p) − log B(α, β)`` with ``0·log 0 = 0`` (so Beta(1, 1) ≡ 1 everywhere);
    a zero density gives ``max_value``.
    """
    log_b = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)  # []
    log_pdf = torch.special.xlogy(alpha - 1, p) + torch.special.xlogy(beta - 1, 1 - p) - log_b  # [*]
    return torch.exp(-log_pdf).clamp(min=0.0, max=max_value)  # [*]


@final
class BNPO(AdvantageEstimator):
    r"""Outcome advantage normalised by a Beta density fitted to the batch's per-question success rates:

        R̃ = (R − reward_min) / (reward_max − reward_min) ∈ [0, 1]
        p_q = mean of R̃ over question q's rollouts;  (α, β) from :func:`beta_parameters` over {p_q}
        A(q, o) = (R̃(q, o) − p_q) · clamp(1 / Beta_pdf(p_q; α, β), 0, max_inverse_pdf)

    Special cases: α = β = 1 is REINFORCE with the group-mean baseline (pdf ≡ 1); α = β = 3/2 gives
    (π/8)·(R − p)/sqrt(p(1−p)), GRPO with the *population* std up to a constant, for binary rewards.
    The sign of A is the sign of R̃ − p. NB: TRL's ``loss_type="bnpo"`` is unrelated (a token-mean aggregation).

    Reward scaling follows the official code: a fixed affine map from ``[reward_min, reward_max]`` (default
    [0, 1], binary correctness) to [0, 1]. A scaled reward outside [0, 1] is an error (``out_of_range =
    "error"``, the official code asserts) or is clamped into it (``"clamp"``).

    Defined behaviour: missing (non-finite) rewards are excluded from p_q and the fit and get 0. A question with
    one valid reward gets advantage 0 and stays out of the fit (``singleton = "zero"``, default), or, as in the
    official code, p = 0 and enters the fit (``"raw"``; then 1/pdf(0) hits the 1e6 clamp whenever α > 1, which is
    why it is not the default). With fewer than 2 questions, or when all p_q are equal,
    α = β = 1. Not invariant to shifting or rescaling the rewards (the range is fixed).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """BNPO parameters.

        Attributes:
            reward_min: reward mapped to 0.
            reward_max: reward mapped to 1; must exceed ``reward_min``.
            max_inverse_pdf: upper clamp of 1/pdf (official 1e6).
            out_of_range: a scaled reward outside [0, 1]: ``error`` or ``clamp``.
            singleton: questions with one valid reward: ``zero`` (default) or ``raw`` (p = 0, official).
        """

        reward_min: float = 0.0
        reward_max: float = 1.0
        max_inverse_pdf: float = attrs.field(default=1e6, validator=attrs.validators.gt(0.0))
        out_of_range: Literal["error", "clamp"] = attrs.field(
            default="error", validator=attrs.validators.in_(("error", "clamp"))
        )
        singleton: Singleton = singleton_field("zero")

        def __attrs_post_init__(self) -> None:
            if not self.reward_max > self.reward_min:
                raise ValueError(
                    f"'reward_max' must be > 'reward_min' (got reward_min={self.reward_min!r}, "
                    f"reward_max={self.reward_max!r})"
                )

    config: Config

    @property
    def invariances(self) -> frozenset[Invariance]:
        """None: the reward range is fixed by the Config."""
        return frozenset()

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        g = grouped(inputs, owner="bnpo")
        lo, hi = self.config.reward_min, self.config.reward_max
        r = (g.rewards - lo) / (hi - lo)  # [N]
        outside = g.valid & ((r < 0) | (r > 1))  # [N]
        if bool(outside.any()):
            if self.config.out_of_range == "error":
                bad = inputs.rewards[outside][:3].tolist()
                raise LmixError(
                    f"bnpo: rewards must lie in [reward_min, reward_max] = [{lo!r}, {hi!r}] (got {bad!r}); "
                    "set reward_min/reward_max to the reward's range, or out_of_range = 'clamp'"
                )
            r = r.clamp(0.0, 1.0)  # [N]
        count = g.count  # [G]
        p = torch.where(count >= 2, g.group_mean(r), torch.zeros_like(count))  # [G]
        in_fit = (count >= 2) | ((count == 1) & (self.config.singleton == "raw"))  # [G]
        alpha, beta = beta_parameters(p[in_fit], all_sum=inputs.all_sum)
        p_row = p[g.index]  # [N]
        weight = inverse_beta_pdf(p_row, alpha, beta, self.config.max_inverse_pdf)  # [N]
        adv = weight * (r - p_row)  # [N]
        adv = torch.where(in_fit[g.index], adv, torch.zeros_like(adv))  # [N]
        return g.broadcast(adv)  # [N, S]
