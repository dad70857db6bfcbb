"""CHORD: a scheduled convex combination of GRPO and SFT, with optional φ token weights."""

from __future__ import annotations

import math
from typing import Literal, final

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from lmix_core.interfaces.mixer import Mixer
from lmix_core.mixers.constant import convex_decision
from lmix_core.types import MixDecision, MixerInputs, StepPlan


@final
class Chord(Mixer):
    r"""CHORD (Zhang et al., arXiv 2508.11408): ``L_t = (1 − μ_t)·L_GRPO + μ_t·L_SFT``.

    μ schedule (Trinity-RFT ``mu_schedule_function``, 0-based step ``t``, warm-up ``w``, decay ``d``)::

        μ_t = μ_peak · t / w                                              t < w
        μ_t = μ_valley + (μ_peak − μ_valley) · ½(1 + cos(π (t − w) / d))  w ≤ t < w + d
        μ_t = μ_valley                                                    t ≥ w + d

    So μ_0 = 0 when w > 0, μ_0 = μ_peak when w = 0 < d, and the schedule is continuous when d > 0 (with d = 0
    it jumps from the warm-up to μ_valley at t = w, as in Trinity).

    CHORD-φ token weights (``token_weighting = "phi"``): the SFT NLL becomes ``token-mean(−sg(φ(p_t))·log p_t)``
    with ``φ(p) = p(1 − p)``, computed from detached log-probs, so φ ∈ [0, ¼] peaks at p = ½ and no gradient
    flows through it.

    Defaults are CHORD-μ's (``examples/mix_chord``): w = 0, d = 200, μ_peak = 0.9, μ_valley = 0.05, no φ.
    CHORD-φ is ``mu_peak = mu_valley = 0.1, decay_steps = 0, token_weighting = "phi"``. [U] the SFT batch is the
    step's own questions' demonstrations (Trinity draws a separate expert batch, ``expert_data_ratio`` 0.2), and
    Trinity's per-micro-batch size rescaling is the loop's token-weight normalisation here.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """CHORD's parameters.

        Attributes:
            mu_peak: μ at the end of the warm-up.
            mu_valley: μ after the decay.
            warmup_steps: steps of the linear warm-up 0 → μ_peak (w).
            decay_steps: steps of the cosine decay μ_peak → μ_valley (d).
            token_weighting: ``none`` (plain NLL) or ``phi`` (CHORD-φ, φ(p) = p(1 − p)).
        """

        mu_peak: float = attrs.field(default=0.9, validator=[v.ge(0.0), v.le(1.0)])
        mu_valley: float = attrs.field(default=0.05, validator=[v.ge(0.0), v.le(1.0)])
        warmup_steps: int = attrs.field(default=0, validator=v.ge(0))
        decay_steps: int = attrs.field(default=200, validator=v.ge(0))
        token_weighting: Literal["none", "phi"] = attrs.field(
            default="none", validator=v.in_(("none", "phi"))
        )

    config: Config

    def mu(self, step: int) -> float:
        """μ at ``step``."""
        c = self.config
        return mu_schedule(step, c.warmup_steps, c.decay_steps, c.mu_peak, c.mu_valley)

    def plan(self, step: int) -> StepPlan:
        mu = self.mu(step)
        return StepPlan(rollouts=mu < 1.0, sft=mu > 0.0)

    def mix(self, inputs: MixerInputs) -> MixDecision:
        return convex_decision(self.mu(inputs.step), inputs)

    def sft_token_weights(self, logp: Tensor) -> Tensor:
        """``φ(p) = p(1 − p)`` of the detached token probabilities (``phi``), or ones (``none``)."""
        if self.config.token_weighting == "none":
            return torch.ones_like(logp)  # [N, S]
        return phi(logp)  # [N, S]


def mu_schedule(step: float, warmup_steps: int, decay_steps: int, mu_peak: float, mu_valley: float) -> float:
    """CHORD's μ: linear warm-up to ``mu_peak``, cosine decay to ``mu_valley``, then constant (see :class:`Chord`)."""
    if step < warmup_steps:
        return mu_peak * step / warmup_steps
    if step >= warmup_steps + decay_steps:
        return mu_valley
    cosine = 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps))
    mu = mu_peak * cosine + mu_valley * (1.0 - cosine)  # exactly μ_peak at t = w
    return min(max(mu, min(mu_peak, mu_valley)), max(mu_peak, mu_valley))


def phi(logp: Tensor) -> Tensor:
    """``φ(p) = p(1 − p)`` with ``p = exp(logp)``, detached. Shape: ``logp`` any, result the same."""
    p = logp.detach().exp()  # [N, S]
    return p * (1.0 - p)  # [N, S]
