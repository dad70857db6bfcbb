"""HPT: per question, SFT on the demonstration when too few rollouts are correct, RL otherwise."""

from __future__ import annotations

from typing import Literal, final

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from lmix_core.interfaces.mixer import Mixer
from lmix_core.types import MixDecision, MixerInputs, StepPlan


@final
class HPT(Mixer):
    r"""Hybrid Post-Training (Lv et al., arXiv 2509.04419; code ``mix_trainer.py::select_on_off_ada_balance``).

    For each question q with P_q correct rollouts out of G (``correct``, or ``reward ≥ 1`` when the loop gives
    only rewards: HPT's ``reward == 1``), the loss is ``Σ_q w_RL(q)·RL_q + sft_coef · Σ_q w_SFT(q)·SFT_q``:

    - ``switch`` (the paper and code): ``(w_RL, w_SFT) = (0, 1)`` if ``P_q ≤ γ`` else ``(1, 0)``. γ = −1 is pure RL,
      γ ≥ G pure SFT (rollouts are still sampled: they are the gate). Paper: γ = 0 for Qwen2.5-Math-7B (SFT only
      when 0/8 correct), γ = 2 for Llama-3.1-8B.
    - ``soft`` [U, lmix's definition]: ``w_SFT(q) = σ((γ + ½ − P_q)/τ)``, ``w_RL(q) = 1 − w_SFT(q)``; a logistic
      version of the same gate, decreasing in the success count, centred half-way between γ and γ + 1, and
      tending to ``switch`` as τ → 0. (HPT's coefficient table (on, off, sft) by P also has an off-policy
      term lmix's mixers do not express; the official code's ``unify_strategy = "soft"`` keeps every rollout and
      adds every demonstration, i.e. ``constant`` with μ = ½ up to a factor 2.)

    ``sft_coef`` is HPT's ``sft_loss_coef`` (1.0 for Qwen2.5-Math-7B, 0.3 for 1.5B). HPT removes the rollouts of
    SFT-gated questions from the batch, so the loop drops rows with weight 0 before normalising the RL loss.
    HPT's second gate ``switch_gate_off`` (off-policy RL on the demonstration) is not modelled.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """HPT's parameters.

        Attributes:
            switch_gate: γ; a question with at most γ correct rollouts trains on its demonstration.
            mode: ``switch`` (hard per-question gate) or ``soft`` (logistic gate of temperature ``soft_temperature``).
            soft_temperature: τ of the ``soft`` gate.
            sft_coef: scale of the SFT term (HPT's ``sft_loss_coef``).
        """

        switch_gate: int = attrs.field(default=0, validator=v.ge(-1))
        mode: Literal["switch", "soft"] = attrs.field(default="switch", validator=v.in_(("switch", "soft")))
        soft_temperature: float = attrs.field(default=0.5, validator=v.gt(0.0))
        sft_coef: float = attrs.field(default=1.0, validator=v.ge(0.0))

    config: Config

    def plan(self, step: int) -> StepPlan:
        never_sft = self.config.mode == "switch" and self.config.switch_gate < 0
        return StepPlan(rollouts=True, sft=not never_sft)

    def sft_gate(self, num_correct: Tensor) -> Tensor:
        """``w_SFT`` per question from its correct-rollout count. Shape: ``num_correct`` ``[Q]``, result ``[Q]``."""
        gamma = self.config.switch_gate
        P = num_correct.to(torch.float64)  # [Q]
        if self.config.mode == "switch":
            return (P <= gamma).to(torch.float64)  # [Q]
        return torch.sigmoid((gamma + 0.5 - P) / self.config.soft_temperature)  # [Q]

    def mix(self, inputs: MixerInputs) -> MixDecision:
        Q = len(inputs.question_ids)
        if inputs.rewards is None:
            return MixDecision(rl_coef=0.0, sft_coef=0.0, rl_weights=(0.0,) * Q, label="none")
        w_sft = self.sft_gate(correct_matrix(inputs).sum(dim=1))  # [Q]
        w_rl = 1.0 - w_sft  # [Q]
        sft = tuple((int(q), float(w)) for q, w in zip(inputs.question_ids, w_sft.tolist()) if w > 0.0)
        any_rl = bool((w_rl > 0).any())
        any_sft = bool(sft) and self.config.sft_coef > 0.0
        label = {(True, True): "mixed", (True, False): "rl", (False, True): "sft", (False, False): "none"}
        return MixDecision(
            rl_coef=1.0 if any_rl else 0.0,
            sft_coef=self.config.sft_coef if any_sft else 0.0,
            rl_weights=tuple(float(w) for w in w_rl.tolist()),
            sft=sft if any_sft else (),
            label=label[(any_rl, any_sft)],
        )


def correct_matrix(inputs: MixerInputs) -> Tensor:
    """``[Q, G]`` bool: the loop's ``correct`` verdicts, else ``rewards ≥ 1`` (NaN counts as wrong).

    Raises:
        ValueError: the rewards are missing or do not have one row per question.
    """
    if inputs.rewards is None:
        raise ValueError("the step has no rollouts, so no rollout can be judged correct")
    correct = inputs.correct if inputs.correct is not None else inputs.rewards >= 1.0  # [Q, G]
    if correct.dim() != 2 or correct.shape[0] != len(inputs.question_ids):
        raise ValueError(
            f"rewards must be [Q, G] with Q = {len(inputs.question_ids)} questions (got {tuple(correct.shape)})"
        )
    return correct.bool()  # [Q, G]
