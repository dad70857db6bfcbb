"""Mixer: how the SFT and RL signals combine at each step."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from lmix_core.interfaces.base import Component
from lmix_core.types import MixDecision, MixerInputs, StepFeedback, StepPlan


class Mixer(Component):
    """Decides, per step and per question, how SFT (NLL on demonstrations) and RL combine.

    The loop calls, each step: :meth:`plan` (before sampling), :meth:`mix` (after rewards), the backend step, then
    :meth:`observe` with the measured gradient norms. State that must survive a resume lives in
    :meth:`state_dict`.

    Most mixers combine losses in one optimiser. One (``parallel_average``) combines optimiser *updates*: it sets
    ``num_optimizer_states = 2``, and the backend then keeps two optimiser states, steps the RL and SFT gradients
    from the same parameter snapshot through each, and applies ``Σ_k update_weights[k] · Δ_k``.

    Contract (``lmix_core.testing.mixer.check_mixer``): decisions are reproducible under a seed, coefficients are
    finite and non-negative, ``state_dict``/``load_state_dict`` round-trip to identical future decisions.
    """

    #: 1: RL and SFT losses are summed into one gradient; 2: two optimiser states, updates averaged.
    num_optimizer_states: ClassVar[int] = 1

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.generator = torch.Generator().manual_seed(int(getattr(config, "seed", 0)))

    @property
    def update_weights(self) -> tuple[float, ...]:
        """Weights of each optimiser state's update (length ``num_optimizer_states``)."""
        return (1.0,)

    @property
    def needs_reference(self) -> bool:
        """Whether :meth:`observe` reads ``StepFeedback.kl_to_initial``, so that the run must load the initial
        policy as a frozen reference (the loop then measures the KL on every step that samples rollouts).
        Default: False."""
        return False

    @abstractmethod
    def plan(self, step: int) -> StepPlan:
        """Whether this step samples rollouts and whether it may train on demonstrations."""

    @abstractmethod
    def mix(self, inputs: MixerInputs) -> MixDecision:
        """The step's coefficients, given its rollouts' rewards (if any)."""

    def observe(self, feedback: StepFeedback) -> None:  # noqa: B027 - optional hook
        """Learn from the step just taken (gradient norms, divergence). Default: nothing."""

    def sft_token_weights(self, logp: Tensor) -> Tensor:
        """Per-token weights of the SFT NLL, from detached log-probs ``[N, S]`` (CHORD's φ). Default: ones."""
        return torch.ones_like(logp)  # [N, S]

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to make the same future decisions."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
