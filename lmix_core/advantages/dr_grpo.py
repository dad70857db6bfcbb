"""Dr.GRPO's mean-only group advantage (Liu et al., "Understanding R1-Zero-Like Training", arXiv 2503.20783)."""

from __future__ import annotations

from typing import final

import attrs
from torch import Tensor

from lmix_core.interfaces.advantage import AdvantageEstimator, Invariance
from lmix_core.ops.groups import Singleton, baseline_advantage, grouped, singleton_field
from lmix_core.types import AdvantageInputs


@final
class DrGRPO(AdvantageEstimator):
    r"""Group-centred outcome reward, with no division by the std:

        Â_i = r_i − mean_g(r)

    The paper also drops the 1/|o_i| length normalisation of the loss; that is the loss's aggregation
    (``agg = "seq-mean-token-sum-norm"``), not the estimator's. Peers: verl ``norm_adv_by_std_in_grpo=False``;
    TRL ``scale_rewards="none"`` (both equal :class:`~lmix_core.advantages.grpo.GRPO` with ``scale="none"``).
    LUFFY, HPT and ReLIFT use this estimator (``grpo_use_std=False``).

    Defined behaviour: constant group → 0; missing (non-finite) rewards are excluded from the mean and get 0; a group
    with one valid reward gets ``r`` (``singleton = "raw"``, verl's mean-0 convention) or 0 (``"zero"``).
    Invariant to r → r + b on groups of ≥ 2; Σ_i Â_i = 0 per group.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """Dr.GRPO parameters.

        Attributes:
            singleton: groups with one valid reward: ``raw`` (baseline 0, as verl) or ``zero``.
        """

        singleton: Singleton = singleton_field("raw")

    config: Config

    @property
    def invariances(self) -> frozenset[Invariance]:
        """Reward maps that leave the output unchanged on groups of >= 2 valid rewards: ``shift``."""
        return frozenset({"shift"})

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        g = grouped(inputs, owner="dr_grpo")
        return baseline_advantage(g, g.group_mean(g.rewards), self.config.singleton)  # [N, S]
