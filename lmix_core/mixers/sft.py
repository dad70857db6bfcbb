"""Pure SFT: no rollouts; every step trains on the NLL of its questions' demonstrations."""

from __future__ import annotations

from typing import final

import attrs

from lmix_core.interfaces.mixer import Mixer
from lmix_core.types import MixDecision, MixerInputs, StepPlan


@final
class SFT(Mixer):
    """``L = L_SFT``: token-mean NLL of the policy on the step's demonstrations, no rollouts.

    Each of the step's questions contributes its demonstration with weight 1 (a plain token-mean over all of
    them, as HPT's ``compute_sft_pure_loss``). ``rl_weights`` are all 0.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """No parameters."""

    config: Config

    def plan(self, step: int) -> StepPlan:
        return StepPlan(rollouts=False, sft=True)

    def mix(self, inputs: MixerInputs) -> MixDecision:
        Q = len(inputs.question_ids)
        return MixDecision(
            rl_coef=0.0,
            sft_coef=1.0,
            rl_weights=(0.0,) * Q,
            sft=tuple((int(q), 1.0) for q in inputs.question_ids),
            label="sft",
        )
