"""OPO: on-policy RL with the length-weighted optimal baseline (Hao et al., arXiv 2505.23585), verl's
``compute_opo_outcome_advantage``; a practical proxy for OBLR-PO's gradient-weighted baseline (arXiv 2511.23310)."""

from __future__ import annotations

from typing import final

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.advantage import AdvantageEstimator, Invariance
from lmix_core.ops.groups import Singleton, baseline_advantage, grouped, singleton_field
from lmix_core.types import AdvantageInputs


@final
class OPO(AdvantageEstimator):
    r"""Group baseline weighted by response length, no std:

        A_i = r_i − b_g,     b_g = Σ_{j∈g} |o_j| r_j / Σ_{j∈g} |o_j|

    Why length: the variance-optimal constant baseline of a REINFORCE estimator is gradient-weighted
    (OBLR-PO, Huang, Sheng & Zheng, arXiv 2511.23310),

        b* = E[‖∇_θ log π(o)‖² R(o)] / E[‖∇_θ log π(o)‖²],

    and OPO takes ‖∇ log π(o)‖² ∝ |o| (a sum of |o| roughly independent per-token score terms). OBLR-PO's own
    practical proxy for ‖∇ log π‖² and its SNR-driven learning-rate rule are not verified [U] and are not
    implemented; a per-token refinement (verl's OTB, W_t = Σ_{j≤t}(1 − 2π_j + Σ_v π_v²)) needs the full
    distribution and is out of scope for an outcome-reward estimator.

    Defined behaviour: constant group → 0; missing (non-finite) rewards are excluded and get 0; a group with one
    valid reward gets ``r`` (``singleton = "raw"``, verl's baseline 0) or 0 (``"zero"``); a group whose valid
    responses are all empty (Σ|o| = 0) uses the plain mean (its advantages are masked out anyway). With equal
    lengths OPO equals Dr.GRPO. Invariant to r → r + b on groups of ≥ 2.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """OPO parameters.

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
        g = grouped(inputs, owner="opo")
        length = g.lengths  # [N]
        total_len = g.group_sum(length)  # [G]
        weighted = g.group_sum(length * g.rewards) / total_len.clamp(min=1.0)  # [G]
        baseline = torch.where(total_len > 0, weighted, g.group_mean(g.rewards))  # [G]
        return baseline_advantage(g, baseline, self.config.singleton)  # [N, S]
