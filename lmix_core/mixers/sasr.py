"""SASR: SFT warm-up, then a random SFT-or-GRPO choice per step driven by the SFT gradient norm."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, final

import attrs
import torch
from attrs import validators as v

from lmix_core.errors import LmixError
from lmix_core.interfaces.mixer import Mixer
from lmix_core.types import MixDecision, MixerInputs, StepFeedback, StepPlan

PForm = Literal["ratio", "clipped"]

#: Floor on G_warmup so that a (pathological) zero warm-up norm cannot divide by zero.
_TINY = 1e-12


@final
class SASR(Mixer):
    r"""SASR, step-wise adaptive SFT/GRPO (Chen et al., arXiv 2505.13026).

    Steps ``0 … W−1`` are SFT (warm-up). At the last one (step W−1) the SFT gradient norm is recorded as
    ``G_warmup``. Every later step is exactly one of SFT or GRPO: a uniform ``u`` from ``self.generator`` (seeded
    with ``seed``) gives SFT iff ``u < p_t``, where, with ``G = G_last_SFT`` the SFT gradient norm of the latest SFT
    step (warm-up included) and ``D`` the latest finite ``kl_to_initial`` the loop reported (0 before any GRPO
    step)::

        ratio   (a):  p_base = G / (G + γ·G_warmup)
        clipped (b):  p_base = min(1, γ·G / G_warmup)
        p_t = min(1, p_base + λ·max(D, 0))                 λ = divergence_coef (0: no divergence term)

    So SFT grows likelier when the policy drifts from the demonstrations (its SFT gradient grows) or from the
    initial model (its KL grows). p_t ∈ [0, 1] and is non-decreasing in G and D for both forms.

    Divergence: with ``divergence_coef > 0`` the mixer sets :attr:`needs_reference`, so the run loads the initial
    policy as its first frozen reference (``backend.references`` may name another model; D is then the KL to that
    one), and the loop reports ``D`` after every GRPO step: its ``kl_ref`` metric, the token mean of
    ``log π(a) − log π_ref(a)`` over the step's rollouts (the k1 estimate of KL(π ‖ π_ref) at the sampling
    temperature). A GRPO step reported without it raises :class:`~lmix_core.errors.LmixError`: the term is never
    silently 0.

    [U] The exact form of p_t and how divergence enters are not in the paper's readable text: ``p_form`` picks
    one of two candidate forms (default ``ratio``), the divergence term is lmix's additive choice, off by
    default. Also [U]: ``warmup_steps`` default 50 and ``gamma`` default 1 (p = ½ at
    ``G = G_warmup`` under ``ratio``); the SFT gradient norm is ``grad_norm_sft`` of the feedback, or the whole
    step's ``grad_norm`` (the same thing on an SFT-only step) when the loop reports only that.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """SASR's parameters.

        Attributes:
            warmup_steps: W, SFT steps before the adaptive phase (≥ 1: G_warmup is measured at the last one).
            gamma: γ of the probability form.
            p_form: ``ratio`` p = G/(G + γ·G_w), or ``clipped`` p = min(1, γ·G/G_w).
            divergence_coef: λ, weight of the KL-to-initial term added to p (0: off; > 0 loads the initial policy
                as a reference).
            seed: seeds the generator that draws SFT or GRPO.
        """

        warmup_steps: int = attrs.field(default=50, validator=v.ge(1))
        gamma: float = attrs.field(default=1.0, validator=v.gt(0.0))
        p_form: PForm = attrs.field(default="ratio", validator=v.in_(("ratio", "clipped")))
        divergence_coef: float = attrs.field(default=0.0, validator=v.ge(0.0))
        seed: int = attrs.field(default=0, validator=v.ge(0))

    config: Config

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._g_warmup: float | None = None
        self._g_last_sft: float | None = None
        self._divergence = 0.0
        self._planned: tuple[int, bool, float] | None = None  # (step, is_sft, p_t) of the latest plan

    @property
    def needs_reference(self) -> bool:
        """True when the divergence term is on (``divergence_coef > 0``): D needs the initial policy loaded."""
        return self.config.divergence_coef > 0.0

    def sft_probability(self) -> float:
        """p_t from the recorded norms and divergence (only defined after the warm-up)."""
        if self._g_warmup is None or self._g_last_sft is None:
            raise LmixError(
                "sasr has no warm-up SFT gradient norm: the loop must report StepFeedback.grad_norm_sft (or "
                f"grad_norm) after every SFT step, including the last warm-up step {self.config.warmup_steps - 1}"
            )
        c = self.config
        return sft_probability(
            c.p_form, self._g_last_sft, self._g_warmup, c.gamma, self._divergence, c.divergence_coef
        )

    def plan(self, step: int) -> StepPlan:
        if self._planned is not None and self._planned[0] == step:
            is_sft = self._planned[1]
        elif step < self.config.warmup_steps:
            is_sft = True
            self._planned = (step, True, 1.0)
        else:
            p = self.sft_probability()
            u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
            is_sft = u < p
            self._planned = (step, is_sft, p)
        return StepPlan(rollouts=not is_sft, sft=is_sft)

    def mix(self, inputs: MixerInputs) -> MixDecision:
        is_sft = self.plan(inputs.step).sft
        Q = len(inputs.question_ids)
        if is_sft:
            sft = tuple((int(q), 1.0) for q in inputs.question_ids)
            return MixDecision(rl_coef=0.0, sft_coef=1.0, rl_weights=(0.0,) * Q, sft=sft, label="sft")
        if inputs.rewards is None:
            return MixDecision(rl_coef=0.0, sft_coef=0.0, rl_weights=(0.0,) * Q, label="none")
        return MixDecision(rl_coef=1.0, sft_coef=0.0, rl_weights=(1.0,) * Q, label="grpo")

    def observe(self, feedback: StepFeedback) -> None:
        d = feedback.decision
        if d.sft_coef > 0.0 and d.rl_coef == 0.0:  # an SFT step
            norm = feedback.grad_norm_sft if feedback.grad_norm_sft is not None else feedback.grad_norm
            if norm is not None and math.isfinite(norm):
                self._g_last_sft = float(norm)
            if feedback.step == self.config.warmup_steps - 1:
                self._g_warmup = self._g_last_sft
        kl = feedback.kl_to_initial
        if kl is None and d.rl_coef > 0.0 and self.config.divergence_coef > 0.0:
            raise LmixError(
                f"sasr: divergence_coef = {self.config.divergence_coef} needs the KL to the initial policy after "
                f"every GRPO step, but step {feedback.step} reported none (StepFeedback.kl_to_initial): the run "
                "must load a reference (the loop does when the mixer's needs_reference is True)"
            )
        if kl is not None and math.isfinite(kl):
            self._divergence = float(kl)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "g_warmup": self._g_warmup,
            "g_last_sft": self._g_last_sft,
            "divergence": self._divergence,
            "planned": None if self._planned is None else list(self._planned),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._g_warmup = state["g_warmup"]
        self._g_last_sft = state["g_last_sft"]
        self._divergence = float(state["divergence"])
        planned = state["planned"]
        self._planned = None if planned is None else (int(planned[0]), bool(planned[1]), float(planned[2]))


def sft_probability(
    p_form: PForm, g_last_sft: float, g_warmup: float, gamma: float, divergence: float, divergence_coef: float
) -> float:
    """SASR's probability of an SFT step (see :class:`SASR`); always in [0, 1].

    Args:
        p_form: ``ratio`` or ``clipped``.
        g_last_sft: G_last_SFT ≥ 0.
        g_warmup: G_warmup > 0 (floored at 1e-12).
        gamma: γ > 0.
        divergence: latest KL to the initial model (negative values count as 0).
        divergence_coef: λ ≥ 0.
    """
    g = max(float(g_last_sft), 0.0)
    g_w = max(float(g_warmup), _TINY)
    if p_form == "ratio":
        p = g / (g + gamma * g_w)
    elif p_form == "clipped":
        p = min(1.0, gamma * g / g_w)
    else:
        raise ValueError(f"'p_form' must be one of 'ratio', 'clipped' (got {p_form!r})")
    p += divergence_coef * max(float(divergence), 0.0)
    return min(max(p, 0.0), 1.0)
