"""A fixed convex combination of the RL and SFT losses."""

from __future__ import annotations

from typing import final

import attrs
from attrs import validators as v

from lmix_core.interfaces.mixer import Mixer
from lmix_core.types import MixDecision, MixerInputs, StepPlan


@final
class Constant(Mixer):
    """``L = (1 − μ)·L_RL + μ·L_SFT`` with a fixed μ (Trinity-RFT's "MIX" baseline, μ = 0.1).

    ``L_SFT`` is the token-mean NLL on the demonstrations of the step's own questions [U: Trinity draws a separate
    expert batch; lmix's loop trains on the demonstrations of the questions it sampled]. ``μ = 0`` is pure RL (no
    demonstrations), ``μ = 1`` pure SFT (no rollouts).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """Constant's parameters.

        Attributes:
            mu: weight μ of the SFT loss; the RL loss gets 1 − μ.
        """

        mu: float = attrs.field(default=0.1, validator=[v.ge(0.0), v.le(1.0)])

    config: Config

    def plan(self, step: int) -> StepPlan:
        mu = self.config.mu
        return StepPlan(rollouts=mu < 1.0, sft=mu > 0.0)

    def mix(self, inputs: MixerInputs) -> MixDecision:
        return convex_decision(self.config.mu, inputs)


def convex_decision(mu: float, inputs: MixerInputs) -> MixDecision:
    """``(1 − μ)·RL + μ·SFT`` over the step's questions, dropping a term whose coefficient is 0.

    Args:
        mu: the SFT weight in [0, 1].
        inputs: the step's questions and rewards (None when the step had no rollouts).
    """
    Q = len(inputs.question_ids)
    rl = inputs.rewards is not None and mu < 1.0
    sft = mu > 0.0
    label = {(True, True): "mixed", (True, False): "rl", (False, True): "sft", (False, False): "none"}[
        (rl, sft)
    ]
    return MixDecision(
        rl_coef=1.0 - mu if rl else 0.0,
        sft_coef=mu if sft else 0.0,
        rl_weights=(1.0 if rl else 0.0,) * Q,
        sft=tuple((int(q), 1.0) for q in inputs.question_ids) if sft else (),
        label=label,
    )
