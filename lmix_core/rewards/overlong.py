"""``overlong``: DAPO's soft length penalty (a shaping term)."""

from __future__ import annotations

from typing import final

import attrs

from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.types import RewardInput, Verdict


@final
class Overlong(RewardVerifier):
    r"""DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, "Overlong Reward Shaping"), scaled:

    .. code-block:: text

        R_len(y) = 0                                   if |y| <= L_max - L_cache
                 = ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max
                 = -1                                  if |y| > L_max
        score    = penalty_factor * R_len(y)

    ``|y|`` is ``RewardInput.num_tokens``, the response length in tokens. The penalty is continuous: 0 up to
    ``L_max - L_cache`` and -``penalty_factor`` at ``L_max``. verl's ``dapo`` reward manager computes
    ``min(-(|y| - (L_max - L_cache)) / L_cache · penalty_factor, 0)`` on responses already capped at ``L_max``,
    which is the same function. Role ``shaping``: it is added to the reward, not counted as accuracy.

    A sample with ``num_tokens = 0`` (unknown length) is not penalised.
    """

    role = "shaping"

    @attrs.frozen(kw_only=True)
    class Config:
        """Parameters of :class:`Overlong`.

        Attributes:
            max_len: ``L_max``, the response length (tokens) that gets the full penalty; DAPO uses 20480.
            cache_len: ``L_cache``, the width of the soft band below ``max_len``; DAPO uses 4096.
            penalty_factor: scale of the penalty (verl's ``overlong_penalty_factor``, default 1.0).
        """

        max_len: int = attrs.field(default=20480, validator=attrs.validators.gt(0))
        cache_len: int = attrs.field(default=4096, validator=attrs.validators.gt(0))
        penalty_factor: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))

        def __attrs_post_init__(self) -> None:
            if self.cache_len > self.max_len:
                raise ValueError(f"'cache_len' must be <= max_len={self.max_len} (got {self.cache_len})")

    config: Config

    def score_one(self, sample: RewardInput, /) -> Verdict:
        cfg = self.config
        length = int(sample.num_tokens)
        budget = cfg.max_len - cfg.cache_len  # L_max - L_cache
        if length <= budget:
            return Verdict(score=0.0, reason=f"within budget ({length} <= {budget} tokens)")
        if length <= cfg.max_len:
            penalty = (budget - length) / cfg.cache_len  # in [-1, 0)
            return Verdict(
                score=cfg.penalty_factor * penalty, reason=f"soft penalty ({length} > {budget} tokens)"
            )
        return Verdict(score=-cfg.penalty_factor, reason=f"over max_len ({length} > {cfg.max_len} tokens)")
