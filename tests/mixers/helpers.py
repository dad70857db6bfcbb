"""Small builders shared by the mixer tests."""

from __future__ import annotations

import torch

from lmix_core.types import MixDecision, MixerInputs, StepFeedback


def inputs(step: int, correct: list[list[int]] | None, qids: tuple[int, ...] | None = None) -> MixerInputs:
    """MixerInputs with rewards = correct (0/1) ``[Q, G]``, or no rollouts when ``correct`` is None."""
    if correct is None:
        return MixerInputs(step=step, question_ids=qids if qids is not None else (0, 1))
    r = torch.tensor(correct, dtype=torch.float32)  # [Q, G]
    q = qids if qids is not None else tuple(range(len(correct)))
    return MixerInputs(step=step, question_ids=q, rewards=r, correct=r >= 1.0)


def feedback(step: int, decision: MixDecision, **kw: float | None) -> StepFeedback:
    return StepFeedback(step=step, decision=decision, **kw)
