"""SFT for a fixed number of steps, then RL (the classic SFT → RL pipeline in one run)."""

from __future__ import annotations

from typing import final

import attrs
from attrs import validators as v

from lmix_core.interfaces.mixer import Mixer
from lmix_core.types import MixDecision, MixerInputs, StepPlan


@final
class Sequential(Mixer):
    """``L_t = L_SFT`` for ``t < sft_steps``, then ``L_t = L_RL`` (SFT→RL, e.g. the baseline of "RL Excursions
    during Pre-Training", arXiv 2606.04272).

    Steps are 0-based: steps ``0 … sft_steps − 1`` are SFT (no rollouts), step ``sft_steps`` is the first RL step.
    ``sft_steps = 0`` is pure RL. One optimiser state runs through both phases (the papers' SFT→RL pipelines are
    two jobs, the second starting from the SFT checkpoint with a fresh optimiser; run two recipes for that).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """Sequential's parameters.

        Attributes:
            sft_steps: number of SFT steps before switching to RL.
        """

        sft_steps: int = attrs.field(default=100, validator=v.ge(0))

    config: Config

    def plan(self, step: int) -> StepPlan:
        sft = step < self.config.sft_steps
        return StepPlan(rollouts=not sft, sft=sft)

    def mix(self, inputs: MixerInputs) -> MixDecision:
        Q = len(inputs.question_ids)
        if inputs.step < self.config.sft_steps:
            sft = tuple((int(q), 1.0) for q in inputs.question_ids)
            return MixDecision(rl_coef=0.0, sft_coef=1.0, rl_weights=(0.0,) * Q, sft=sft, label="sft")
        if inputs.rewards is None:
            return MixDecision(rl_coef=0.0, sft_coef=0.0, rl_weights=(0.0,) * Q, label="none")
        return MixDecision(rl_coef=1.0, sft_coef=0.0, rl_weights=(1.0,) * Q, label="rl")
