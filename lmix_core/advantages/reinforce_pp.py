"""REINFORCE++ (Hu, arXiv 2501.03262): outcome returns whitened over the global batch."""

from __future__ import annotations

from typing import Literal, final

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.advantage import AdvantageEstimator, Invariance
from lmix_core.ops.groups import Singleton, grouped, singleton_field
from lmix_core.ops.masked import masked_whiten
from lmix_core.types import AdvantageInputs


@final
class ReinforcePP(AdvantageEstimator):
    r"""Token returns of the outcome reward, whitened over every response token of the batch:

        r'_i     = r_i                   (baseline = "none", verl ``reinforce_plus_plus``)
                 = r_i − mean_g(r)       (baseline = "group", verl ``reinforce_plus_plus_baseline``)
        G_{i,t}  = Σ_{s ≥ t} γ^{s−t} r'_{i,s}    with r'_{i,s} = r'_i at the response's last token, 0 before
                 = γ^{k_{i,t}} r'_i,     k_{i,t} = number of response tokens after t
        A_{i,t}  = (G_{i,t} − μ) / sqrt(σ² + eps)

    where μ and σ² are the masked mean and *unbiased* variance of G over all response tokens of the batch, every
    data-parallel rank's (verl whitens the whole batch on the driver; verl ``masked_whiten``, ``eps = 1e-8``). With the default γ = 1, G is constant along a response (= r'_i), so
    longer responses weigh more in μ and σ²: that is verl's token-level whitening. After whitening the batch's masked
    mean is 0 and its unbiased variance σ²/(σ² + eps) ≈ 1.

    A KL penalty in the reward (``train.kl_in_reward_coef``, verl ``use_kl_in_reward``) reaches this estimator as
    ``r − β·Σ_t KL_t``: with ``baseline = "group"`` that is verl's (``reinforce_plus_plus_baseline`` sums the token
    rewards); plain verl ``reinforce_plus_plus`` instead discounts the per-token penalties into the returns, so
    there the two differ. For masks with holes, k counts response tokens (verl's loop instead resets the return
    at a hole); for contiguous responses the two agree.

    Defined behaviour: missing (non-finite) rewards take no part in μ, σ² and get 0; with fewer than 2 scored
    tokens σ² = 0, so every advantage is 0; ``baseline = "group"`` uses mean 0 for a group with one valid
    reward (verl) when ``singleton = "raw"`` or gives that reward r' = 0 when ``"zero"``.
    Invariances: r → a·r (a > 0, up to eps); r → r + b when γ = 1 or ``baseline = "group"``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """REINFORCE++ parameters.

        Attributes:
            baseline: ``none`` (REINFORCE++) or ``group`` (subtract the group mean first: REINFORCE++-baseline).
            gamma: discount of the token returns (verl default 1.0).
            eps: added to the variance under the square root (verl 1e-8).
            singleton: with ``baseline = "group"``, groups with one valid reward: ``raw`` (mean 0) or ``zero``.
        """

        baseline: Literal["none", "group"] = attrs.field(
            default="none", validator=attrs.validators.in_(("none", "group"))
        )
        gamma: float = attrs.field(
            default=1.0, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
        )
        eps: float = attrs.field(default=1e-8, validator=attrs.validators.gt(0.0))
        singleton: Singleton = singleton_field("raw")

    config: Config

    @property
    def invariances(self) -> frozenset[Invariance]:
        """Reward maps that leave the output unchanged on groups of >= 2 valid rewards (up to eps)."""
        if self.config.gamma == 1.0 or self.config.baseline == "group":
            return frozenset({"shift", "scale"})
        return frozenset({"scale"})

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        g = grouped(inputs, owner="reinforce_pp")
        r = g.rewards  # [N]
        if self.config.baseline == "group":
            r = g.resolve_singletons(g.centred(), self.config.singleton)  # [N]
        m = g.mask & g.valid[:, None]  # [N, S]
        after = m.flip(-1).cumsum(-1).flip(-1) - m.to(torch.long)  # [N, S] response tokens after t
        gamma = torch.tensor(self.config.gamma, dtype=torch.float64, device=after.device)  # []
        returns = r[:, None] * torch.pow(gamma, after)  # [N, S]
        adv = masked_whiten(returns, m, eps=self.config.eps, all_sum=inputs.all_sum)  # [N, S]
        return adv.to(torch.float32)  # [N, S]
