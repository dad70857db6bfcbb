"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al., arXiv 2402.14740)."""

from __future__ import annotations

from typing import final

import attrs
from torch import Tensor

from lmix_core.interfaces.advantage import AdvantageEstimator, Invariance
from lmix_core.ops.groups import Singleton, grouped, singleton_field
from lmix_core.types import AdvantageInputs


@final
class RLOO(AdvantageEstimator):
    r"""Each rollout's baseline is the mean reward of the *other* rollouts of its question:

        A_i = r_i − (1/(n−1)) Σ_{j≠i} r_j = n/(n−1) · (r_i − mean_g(r))

    with n the number of valid rewards in the group. Peers: verl ``compute_rloo_outcome_advantage``
    (``r·n/(n−1) − mean·n/(n−1)``); TRL ``RLOOTrainer`` (``(Σ_g − r_i)/(n − 1)``; TRL also moves the KL into the
    reward, which lmix leaves to the loss's ``kl_coef``).

    Defined behaviour: constant group → 0; missing (non-finite) rewards are excluded (they change n) and get 0. A
    group with one valid reward has no leave-one-out baseline: ``singleton = "zero"`` (default) gives 0,
    ``"raw"`` passes ``r`` through as verl does. Invariant to r → r + b on groups of ≥ 2; Σ_i A_i = 0 per group;
    changing r_j (j ≠ i) by δ changes A_i by −δ/(n−1).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """RLOO parameters.

        Attributes:
            singleton: groups with one valid reward: ``zero`` (default) or ``raw`` (verl keeps ``r``).
        """

        singleton: Singleton = singleton_field("zero")

    config: Config

    @property
    def invariances(self) -> frozenset[Invariance]:
        """Reward maps that leave the output unchanged on groups of >= 2 valid rewards: ``shift``."""
        return frozenset({"shift"})

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        g = grouped(inputs, owner="rloo")
        n = g.row_count  # [N]
        adv = g.centred() * n / (n - 1.0).clamp(min=1.0)  # [N]
        return g.broadcast(g.resolve_singletons(adv, self.config.singleton))  # [N, S]
