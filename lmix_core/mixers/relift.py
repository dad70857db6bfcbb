"""ReLIFT: RL, plus an SFT update on the hardest questions whenever enough of them have piled up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, final

import attrs
from attrs import validators as v

from lmix_core.interfaces.mixer import Mixer
from lmix_core.mixers.hpt import correct_matrix
from lmix_core.types import MixDecision, MixerInputs, StepPlan


@final
class ReLIFT(Mixer):
    r"""ReLIFT (Ma et al., arXiv 2506.07527; code ``relift/trainer.py``).

    RL steps run as usual (weight 1 on every question). After each, the questions whose G rollouts are **all
    wrong** (no ``correct``, or no ``reward ≥ 1`` when only rewards are given) are appended to a FIFO buffer
    (a question that fails again later is appended again). Whenever the buffer holds ``≥ N = buffer_size`` items,
    an SFT update trains on the N oldest (weight 1 each, token-mean NLL) and removes exactly those N::

        separate (default, ReLIFT): the step after the buffer reaches N is an SFT-only step: no rollouts and no
                                    RL term that step; further SFT steps follow while the buffer still holds ≥ N.
        joint:                      the step whose rollouts fill the buffer adds the SFT term to its own loss
                                    (its RL term still runs): L = L_RL + L_SFT(buffer).

    ReLIFT interleaves a separate SFT optimiser update between RL updates, hence ``separate``; lmix counts that
    update as its own step. Not modelled: ReLIFT's SFT entropy bonus (−0.001·H) and its separate SFT learning rate.
    Default N = 128 (ReLIFT's ``sft_data_size``).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """ReLIFT's parameters.

        Attributes:
            buffer_size: N, how many buffered questions an SFT update consumes (and the buffer level that triggers
                it).
            sft_step: ``separate`` (an SFT-only step after the buffer fills) or ``joint`` (SFT added to the RL step
                that fills it).
        """

        buffer_size: int = attrs.field(default=128, validator=v.ge(1))
        sft_step: Literal["separate", "joint"] = attrs.field(
            default="separate", validator=v.in_(("separate", "joint"))
        )

    config: Config

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._buffer: list[int] = []

    @property
    def buffer(self) -> tuple[int, ...]:
        """Dataset indices waiting for an SFT update, oldest first."""
        return tuple(self._buffer)

    def plan(self, step: int) -> StepPlan:
        if self.config.sft_step == "joint":
            return StepPlan(rollouts=True, sft=True)
        full = len(self._buffer) >= self.config.buffer_size
        return StepPlan(rollouts=not full, sft=full)

    def mix(self, inputs: MixerInputs) -> MixDecision:
        Q = len(inputs.question_ids)
        N = self.config.buffer_size
        rl = inputs.rewards is not None
        if rl:
            all_wrong = ~correct_matrix(inputs).any(dim=1)  # [Q]
            self._buffer.extend(int(q) for q, bad in zip(inputs.question_ids, all_wrong.tolist()) if bad)
        sft: tuple[tuple[int, float], ...] = ()
        if len(self._buffer) >= N and (self.config.sft_step == "joint" or not rl):
            sft = tuple((q, 1.0) for q in self._buffer[:N])
            del self._buffer[:N]
        label = {(True, True): "mixed", (True, False): "rl", (False, True): "sft", (False, False): "none"}
        return MixDecision(
            rl_coef=1.0 if rl else 0.0,
            sft_coef=1.0 if sft else 0.0,
            rl_weights=(1.0 if rl else 0.0,) * Q,
            sft=sft,
            label=label[(rl, bool(sft))],
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": list(self._buffer)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._buffer = [int(q) for q in state["buffer"]]
