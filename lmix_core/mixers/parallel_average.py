"""RL Excursions' parallel averaging: RL and SFT updates from one snapshot, two optimiser states, averaged."""

from __future__ import annotations

from typing import ClassVar, final

import attrs
from attrs import validators as v

from lmix_core.interfaces.mixer import Mixer
from lmix_core.types import MixDecision, MixerInputs, StepPlan


@final
class ParallelAverage(Mixer):
    r"""Parallel averaging (Bansal et al., arXiv 2606.04272, "RL Excursions during Pre-Training").

    Every step computes both gradients at the same snapshot θ̄ and sends each through its own optimiser state
    (independent AdamW moments), then averages the *updates*::

        g_RL = ∇L_RL(θ̄),  g_SFT = ∇L_SFT(θ̄)
        Δ_RL = AdamW_RL(g_RL),  Δ_SFT = AdamW_SFT(g_SFT)
        θ ← θ̄ + w·Δ_RL + (1 − w)·Δ_SFT                  w = rl_weight = ½ in the paper

    The mixer sets ``num_optimizer_states = 2`` (state 0 takes the RL micro-batches, state 1 the SFT ones) and
    ``update_weights = (w, 1 − w)``; backends apply them with :func:`lmix_core.ops.update_average.step_averaged`.
    Both loss coefficients are 1, since the combination happens on the updates. A step (or minibatch) whose RL or
    SFT group is empty on every rank, e.g. no question of the step has a demonstration, applies the other update
    at full weight and leaves the idle state's moments alone (``update_average.present_weights``): lmix's choice,
    so that a missing half never silently halves the step. [U] the SFT batch is the
    demonstrations of the step's own questions (the paper does not say whether the two batches share questions),
    and both states use the run's learning rate (η_RL, η_SFT are not given).
    """

    num_optimizer_states: ClassVar[int] = 2

    @attrs.frozen(kw_only=True)
    class Config:
        """Parallel averaging's parameters.

        Attributes:
            rl_weight: w, the weight of the RL update; the SFT update gets 1 − w.
        """

        rl_weight: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)])

    config: Config

    @property
    def update_weights(self) -> tuple[float, ...]:
        """``(w, 1 − w)``: weights of the RL (state 0) and SFT (state 1) updates."""
        return (self.config.rl_weight, 1.0 - self.config.rl_weight)

    def plan(self, step: int) -> StepPlan:
        return StepPlan(rollouts=True, sft=True)

    def mix(self, inputs: MixerInputs) -> MixDecision:
        Q = len(inputs.question_ids)
        rl = inputs.rewards is not None
        return MixDecision(
            rl_coef=1.0 if rl else 0.0,
            sft_coef=1.0,
            rl_weights=(1.0 if rl else 0.0,) * Q,
            sft=tuple((int(q), 1.0) for q in inputs.question_ids),
            label="parallel",
        )
