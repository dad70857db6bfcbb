"""RewardVerifier: scores completions, never crashes."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

from lmix_core.interfaces.base import Component
from lmix_core.types import RewardInput, Verdict

Role = Literal["correctness", "format", "shaping"]


class RewardVerifier(Component):
    """Scores a batch of samples; every sample gets a score and a short reason.

    ``role`` says what the score measures: ``correctness`` scores in [0, 1] feed accuracy and HPT's gate,
    ``format`` scores feed the format rate, ``shaping`` terms (length penalties) only the reward.

    Verifiers are called through ``lmix_core.rewards.pool.score`` which runs :meth:`score_one` in worker processes
    with a per-sample time limit, so a hung or crashing verifier costs that sample a 0 (reason ``timeout`` or
    ``crashed``), never the run. ``score_one`` must be picklable-safe: module-level class, plain Config.

    Contract (``lmix_core.testing.reward.check_reward``): never raises on any string (empty, huge, NUL bytes,
    surrogates, unbalanced braces), returns finite scores and non-empty reasons.
    """

    role: ClassVar[Role] = "correctness"

    @abstractmethod
    def score_one(self, sample: RewardInput, /) -> Verdict:
        """Judge one sample. May raise; the pool turns exceptions into a 0 with reason ``crashed: ...``."""

    def score(self, samples: Sequence[RewardInput], /) -> list[Verdict]:
        """Judge a batch in this process (no time limit); the pool is the safe entry point."""
        return [self.score_one(s) for s in samples]
