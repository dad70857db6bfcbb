"""GRPO's group-normalised outcome advantage (DeepSeekMath, Shao et al., arXiv 2402.03300)."""

from __future__ import annotations

from typing import Literal, final

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.advantage import AdvantageEstimator, Invariance
from lmix_core.ops.groups import Grouped, Singleton, grouped, singleton_field
from lmix_core.ops.masked import AllSum, global_sums
from lmix_core.types import AdvantageInputs


@final
class GRPO(AdvantageEstimator):
    r"""Group z-score of the outcome reward, the same for every token of a response.

        Â_i = (r_i − mean_g(r)) / (std_g(r) + eps)        (g = i's group: rollouts of the same question)

    Peer conventions:
        * verl ``compute_grpo_outcome_advantage``: unbiased ``torch.std``, ``eps = 1e-6`` (our defaults).
        * TRL ``GRPOTrainer``: Bessel-corrected ``nanstd``, ``eps = 1e-4`` (set ``eps = 1e-4``), and
          ``scale_rewards`` ∈ {group, batch, none} (our ``scale``): ``batch`` divides the group-centred rewards by
          the std of *all* rewards of the batch (every data-parallel rank's, as TRL gathers them before it
          normalises), ``none`` is Dr.GRPO's ``r − mean``.
        * The BNPO paper's analysis uses the population std (``std = "population"``).

    Defined behaviour:
        * Constant group: Â = 0 exactly (statistics are taken in float64).
        * Missing rewards (NaN, ±inf): excluded from every statistic; their advantage is 0 (TRL treats NaN rewards
          as unscorable the same way).
        * Group with one valid reward: ``singleton = "raw"`` (default) follows verl's convention mean 0, std 1, so
          Â = r / (1 + eps) (``r`` under ``scale = "none"``); ``singleton = "zero"`` gives 0 (no baseline, no
          signal).

    Invariances (groups of ≥ 2 valid rewards): Â is unchanged by r → r + b, and by r → a·r (a > 0) up to eps
    unless ``scale = "none"``. Σ_i Â_i = 0 per group.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """GRPO parameters.

        Attributes:
            std: ``unbiased`` (n − 1, verl/TRL) or ``population`` (n) standard deviation.
            eps: added to the std in the denominator (verl 1e-6, TRL 1e-4).
            scale: ``group`` std (GRPO), ``batch`` std (TRL ``scale_rewards="batch"``) or ``none`` (Dr.GRPO).
            singleton: groups with one valid reward: ``raw`` (mean 0, std 1, as verl) or ``zero``.
        """

        std: Literal["unbiased", "population"] = attrs.field(
            default="unbiased", validator=attrs.validators.in_(("unbiased", "population"))
        )
        eps: float = attrs.field(default=1e-6, validator=attrs.validators.ge(0.0))
        scale: Literal["group", "batch", "none"] = attrs.field(
            default="group", validator=attrs.validators.in_(("group", "batch", "none"))
        )
        singleton: Singleton = singleton_field("raw")

    config: Config

    @property
    def invariances(self) -> frozenset[Invariance]:
        """Reward maps that leave the output unchanged on groups of >= 2 valid rewards (read by the contract suite):
        ``shift`` (r + b) and, unless ``scale = "none"``, ``scale`` (a·r, a > 0, up to eps)."""
        return frozenset({"shift"} if self.config.scale == "none" else {"shift", "scale"})

    def _std(self, g: Grouped, all_sum: AllSum) -> Tensor:
        """The denominator's std, per row ``[N]`` float64 (ones for ``scale = "none"``); the batch std spans every
        data-parallel rank's rewards (counts and sums reduced with ``all_sum``)."""
        unbiased = self.config.std == "unbiased"
        if self.config.scale == "group":
            return g.group_var(g.rewards, unbiased=unbiased).sqrt()[g.index]  # [N]
        if self.config.scale == "batch":
            total = torch.where(g.valid, g.rewards, 0.0).sum()  # []
            n, total = global_sums(all_sum, g.valid.sum(), total)  # [], []
            mean = total / n.clamp(min=1)  # []
            (ss,) = global_sums(all_sum, torch.where(g.valid, (g.rewards - mean) ** 2, 0.0).sum())  # []
            denom = (n - 1) if unbiased else n  # []
            var = torch.where(denom > 0, ss / denom.clamp(min=1), torch.zeros_like(ss))  # []
            return var.sqrt().expand_as(g.rewards)  # [N]
        return torch.ones_like(g.rewards)  # [N]

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        g = grouped(inputs, owner="grpo")
        eps = self.config.eps if self.config.scale != "none" else 0.0
        centred = g.centred()  # [N]
        denom = self._std(g, inputs.all_sum) + eps  # [N]
        adv = torch.where(centred == 0, torch.zeros_like(centred), centred / denom)  # [N]
        adv = g.resolve_singletons(adv, self.config.singleton, raw=g.rewards / (1.0 + eps))  # [N]
        return g.broadcast(adv)  # [N, S]
