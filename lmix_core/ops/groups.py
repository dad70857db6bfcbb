"""Per-group statistics of outcome rewards, shared by the group-baseline advantage estimators.

Rewards arrive as ``[N]`` with ``[N]`` group ids (rollouts of one question share an id). Non-finite rewards (NaN
marks "could not be scored"; ±inf is treated the same) are *missing*: they take no part in any statistic and every
estimator gives them advantage 0. Statistics are computed in float64 so that a constant group centres to exactly 0.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
from torch import Tensor

from lmix_core.errors import LmixError
from lmix_core.types import AdvantageInputs

#: What a group with one valid reward gets: ``raw`` passes the reward through (verl's baseline 0, std 1), ``zero``
#: gives 0 (a lone sample has no baseline).
Singleton = Literal["raw", "zero"]


def singleton_field(default: Singleton) -> Any:
    """The ``singleton`` Config field of the group-baseline estimators, with its validator."""
    return attrs.field(default=default, validator=attrs.validators.in_(("raw", "zero")))


@attrs.frozen(kw_only=True)
class Grouped:
    """Rewards prepared for group statistics.

    Attributes:
        rewards: ``[N]`` float64, missing rewards replaced by 0.
        valid: ``[N]`` bool, finite rewards.
        index: ``[N]`` int64 group of each row, in ``0 .. num_groups − 1``.
        num_groups: number of distinct group ids.
        count: ``[num_groups]`` float64, valid rewards per group.
        mask: ``[N, S]`` bool response mask.
    """

    rewards: Tensor
    valid: Tensor
    index: Tensor
    num_groups: int
    count: Tensor
    mask: Tensor

    @property
    def row_count(self) -> Tensor:
        """``[N]`` float64, valid rewards in each row's group."""
        return self.count[self.index]  # [N]

    @property
    def lengths(self) -> Tensor:
        """``[N]`` float64 response lengths ``|o_i|`` (tokens in the mask)."""
        return self.mask.sum(-1).to(torch.float64)  # [N]

    def group_sum(self, values: Tensor) -> Tensor:
        """Σ over each group's *valid* rows of ``values`` ``[N]``; returns ``[num_groups]`` float64."""
        kept = torch.where(self.valid, values.to(torch.float64), torch.zeros_like(self.rewards))  # [N]
        out = torch.zeros(self.num_groups, dtype=torch.float64, device=values.device)  # [G]
        return out.index_add_(0, self.index, kept)  # [G]

    def group_mean(self, values: Tensor) -> Tensor:
        """Mean over each group's valid rows; 0 for a group with none. ``[num_groups]`` float64."""
        return self.group_sum(values) / self.count.clamp(min=1)  # [G]

    def group_var(self, values: Tensor, *, unbiased: bool) -> Tensor:
        """Variance over each group's valid rows (two-pass); 0 where it is undefined. ``[num_groups]``."""
        centred = values.to(torch.float64) - self.group_mean(values)[self.index]  # [N]
        ss = self.group_sum(centred * centred)  # [G]
        denom = (self.count - 1.0) if unbiased else self.count  # [G]
        return torch.where(denom > 0, ss / denom.clamp(min=1e-300), torch.zeros_like(ss))  # [G]

    def centred(self) -> Tensor:
        """``r_i − mean_g(r)`` per row, ``[N]`` float64 (the group-mean baseline)."""
        return self.rewards - self.group_mean(self.rewards)[self.index]  # [N]

    def resolve_singletons(self, adv: Tensor, singleton: Singleton, *, raw: Tensor | None = None) -> Tensor:
        """``adv`` ``[N]`` with the rows of one-valid-reward groups replaced by ``raw`` (default: the reward) under
        ``singleton = "raw"``, or by 0 under ``"zero"``."""
        lone = (
            (self.rewards if raw is None else raw) if singleton == "raw" else torch.zeros_like(self.rewards)
        )  # [N]
        return torch.where(self.row_count == 1, lone, adv)  # [N]

    def broadcast(self, per_row: Tensor) -> Tensor:
        """Spread a per-row advantage ``[N]`` over the response tokens: ``[N, S]`` float32, 0 off the mask and on
        missing rewards."""
        per_row = torch.where(self.valid, per_row, torch.zeros_like(per_row)).to(torch.float32)  # [N]
        return torch.where(self.mask, per_row[:, None], torch.zeros((), dtype=torch.float32))  # [N, S]


def grouped(inputs: AdvantageInputs, *, owner: str) -> Grouped:
    """Check the shapes of ``inputs`` and index its groups.

    Args:
        inputs: rewards ``[N]``, group ids ``[N]``, mask ``[N, S]``.
        owner: the estimator's registered name, for error messages.

    Raises:
        LmixError: when the shapes or dtypes disagree.
    """
    rewards, group_ids, mask = inputs.rewards, inputs.group_ids, inputs.mask
    if rewards.ndim != 1:
        raise LmixError(f"{owner}: 'rewards' must be 1-D [N] (got shape {tuple(rewards.shape)})")
    n = rewards.shape[0]
    if group_ids.shape != (n,):
        raise LmixError(
            f"{owner}: 'group_ids' must have shape [{n}] like 'rewards' (got {tuple(group_ids.shape)})"
        )
    if group_ids.is_floating_point() or group_ids.is_complex() or group_ids.dtype == torch.bool:
        raise LmixError(f"{owner}: 'group_ids' must be an integer tensor (got {group_ids.dtype})")
    if mask.ndim != 2 or mask.shape[0] != n:
        raise LmixError(f"{owner}: 'mask' must have shape [{n}, S] (got {tuple(mask.shape)})")
    r = rewards.to(torch.float64)  # [N]
    valid = torch.isfinite(r)  # [N]
    r = torch.where(valid, r, torch.zeros_like(r))  # [N]
    _, index = torch.unique(group_ids, return_inverse=True)  # [N]
    index = index.reshape(n).to(torch.long)  # [N]
    num_groups = int(index.max().item()) + 1 if n else 0
    count = torch.zeros(num_groups, dtype=torch.float64, device=r.device)  # [G]
    count = count.index_add_(0, index, valid.to(torch.float64))  # [G]
    return Grouped(
        rewards=r, valid=valid, index=index, num_groups=num_groups, count=count, mask=mask.to(torch.bool)
    )


def baseline_advantage(g: Grouped, baseline: Tensor, singleton: Singleton) -> Tensor:
    """``A_i = r_i − b_{g(i)}`` for a per-group baseline, spread over the response tokens.

    Args:
        g: the grouped rewards.
        baseline: ``[num_groups]`` baseline of each group (Dr.GRPO: the mean; OPO: the length-weighted mean).
        singleton: what rows of one-valid-reward groups get (:meth:`Grouped.resolve_singletons`).

    Returns:
        ``[N, S]`` float32, 0 off the mask and on missing rewards.
    """
    adv = g.rewards - baseline[g.index]  # [N]
    return g.broadcast(g.resolve_singletons(adv, singleton))  # [N, S]
