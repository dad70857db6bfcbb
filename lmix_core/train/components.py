"""The parts a run is built from: components, data and settings, assembled from a validated recipe."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from lmix_core.data.example import Example
from lmix_core.interfaces.advantage import AdvantageEstimator
from lmix_core.interfaces.backend import TrainerBackend
from lmix_core.interfaces.combiner import PolicyCombiner
from lmix_core.interfaces.loss import PolicyLoss
from lmix_core.interfaces.mixer import Mixer
from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.settings import EvalConfig, LoggingConfig, SamplingConfig, TrainConfig
from lmix_core.types import RewardInput


@attrs.frozen(kw_only=True)
class Scored:
    """Rewards of a batch of completions.

    Attributes:
        rewards: ``[N]`` weighted sum of every verifier's score.
        correct: ``[N]`` bool, every correctness verifier scored 1 (False when there is none).
        has_correctness: whether any verifier has the ``correctness`` role.
        format_rate: mean score of the ``format`` verifiers, or None when there is none.
        reasons: per sample, ``name: reason`` for every verifier.
    """

    rewards: Tensor
    correct: Tensor
    has_correctness: bool
    format_rate: float | None
    reasons: tuple[tuple[str, ...], ...]


class RewardSuite:
    """The recipe's ``[[rewards]]``: weighted verifiers scored through the worker pool (time-limited)."""

    def __init__(
        self, named: Sequence[tuple[str, RewardVerifier, float]], *, timeout_s: float | None = None
    ) -> None:
        from lmix_core.rewards.pool import DEFAULT_TIMEOUT_S, RewardPool

        self.named = list(named)
        self.pool = RewardPool(timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)

    def score(
        self,
        examples: Sequence[Example],
        prompts: Sequence[str],
        completions: Sequence[str],
        lengths: Sequence[int],
    ) -> Scored:
        samples = [
            RewardInput(
                prompt=pr, completion=c, reference=ex.answer, metadata=dict(ex.metadata), num_tokens=int(n)
            )
            for ex, pr, c, n in zip(examples, prompts, completions, lengths, strict=True)
        ]
        verdicts = self.pool.score([v for _, v, _ in self.named], samples)  # [verifier][sample]
        N = len(samples)
        rewards = torch.zeros(N, dtype=torch.float32)  # [N]
        correct = torch.ones(N, dtype=torch.bool)  # [N]
        has_correctness, formats = False, []
        for (_, verifier, weight), column in zip(self.named, verdicts, strict=True):
            scores = torch.tensor([v.score for v in column], dtype=torch.float32)  # [N]
            rewards += weight * scores  # [N]
            if verifier.role == "correctness":
                has_correctness = True
                correct &= scores >= 1.0  # [N]
            elif verifier.role == "format":
                formats.append(float(scores.mean()))
        reasons = tuple(
            tuple(f"{name}: {column[i].reason}" for (name, _, _), column in zip(self.named, verdicts))
            for i in range(N)
        )
        return Scored(
            rewards=rewards,
            correct=correct if has_correctness else torch.zeros(N, dtype=torch.bool),
            has_correctness=has_correctness,
            format_rate=sum(formats) / len(formats) if formats else None,
            reasons=reasons,
        )

    def close(self) -> None:
        self.pool.close()


@attrs.define(kw_only=True)
class Components:
    """Everything a :class:`~lmix_core.train.loop.Trainer` needs."""

    backend: TrainerBackend
    combiner: PolicyCombiner
    advantage: AdvantageEstimator
    loss: PolicyLoss
    mixer: Mixer
    rewards: RewardSuite
    train: TrainConfig
    sampling: SamplingConfig
    eval: EvalConfig
    logging: LoggingConfig
    train_examples: list[Example]
    eval_examples: list[Example]
    render_prompt: Callable[[Any, Example], str]
    resolved: Mapping[str, Any] = attrs.field(factory=dict)
    out_dir: Path | None = None

    def examples(self, split: str) -> list[Example]:
        return self.train_examples if split == "train" else self.eval_examples
