"""Pure RL: every step samples rollouts and trains on the policy-gradient loss alone."""

from __future__ import annotations

from typing import final

import attrs

from lmix_core.interfaces.mixer import Mixer
from lmix_core.types import MixDecision, MixerInputs, StepPlan


@final
class RL(Mixer):
    """``L = L_RL``: the plain RL baseline (GRPO, Dr.GRPO, ... depending on the advantage and loss).

    Every question's RL term has weight 1; demonstrations are never used. When a step has no rollouts (a loop
    that does not follow :meth:`plan`), the decision is empty: ``rl_coef = 0``, all weights 0.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """No parameters."""

    config: Config

    def plan(self, step: int) -> StepPlan:
        return StepPlan(rollouts=True, sft=False)

    def mix(self, inputs: MixerInputs) -> MixDecision:
        Q = len(inputs.question_ids)
        if inputs.rewards is None:
            return MixDecision(rl_coef=0.0, sft_coef=0.0, rl_weights=(0.0,) * Q, label="none")
        return MixDecision(rl_coef=1.0, sft_coef=0.0, rl_weights=(1.0,) * Q, label="rl")
