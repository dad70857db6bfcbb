"""Prefix-RFT: hybrid rollouts of a demonstration prefix and an on-policy continuation ("Blending Supervised and
Reinforcement Fine-Tuning with Prefix Sampling", arXiv 2507.01679)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, final

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from lmix_core.errors import BackendError
from lmix_core.interfaces.combiner import LossMasks, PolicyCombiner
from lmix_core.ops.mixed_logprobs import check_reference_logits
from lmix_core.ops.schedules import Shape, interpolate
from lmix_core.types import Distribution

#: Slack for ``ceil(fraction · count)`` so that 0.7·10 = 7.000000000000001 keeps 7 tokens, not 8.
_CEIL_SLACK = 1e-9


@final
class Prefix(PolicyCombiner):
    r"""Prefix-RFT (Huang et al., arXiv 2507.01679): demonstration prefixes, then on-policy continuations.

    For question q with demonstration y* and step t, ``num_prefixed`` of the G rollouts are hybrid:
    ``y = y*_{≤L} ⊕ y_{>L}``, ``y_{>L} ~ π_θ(· | x, y*_{≤L})``, rewarded on the whole response, the rest are
    ordinary on-policy rollouts, and all G share one group baseline. The prefix fraction follows a schedule
    (``lmix_core.ops.schedules``; Prefix-RFT: cosine 95% → 5%)::

        r_t = ratio_end + (ratio_start − ratio_end)·(1 + cos(π·min(t / schedule_steps, 1)))/2
        L   = round(r_t·|y*|)                (length = "fixed")
        L   = round(u·r_t·|y*|), u ~ U[0, 1)  (length = "uniform", one draw per prefixed rollout)
        L  ← clip(L, 0, |y*|)                (round half to even)

    Loss masks: prefix tokens are off-policy (forced, not sampled). Only the top ``entropy_top_fraction`` of them
    by behaviour entropy keep their gradient (Prefix-RFT: 20%): ``k = ⌈f·n⌉`` of the ``n`` prefix tokens of the
    batch (``entropy_scope = "batch"``) or of each sequence (``"sequence"``); tokens tied with the k-th largest
    entropy are kept too, as TRL's ``top_entropy_quantile`` keeps ``H ≥ threshold``. Under data parallelism "the
    batch" is each rank's own rollouts (TRL gathers every process's entropies first): ``loss_masks`` has no
    reduction over ranks. Continuation tokens are never
    masked. Prefix tokens take the ordinary PPO ratio (``prefix_loss = "ratio"``) or LUFFY's off-policy shaping
    ``ℓ = −Â·p/(p + γ)`` (``"luffy"``, γ = ``luffy_gamma``), applied by the loss through ``offpolicy_gamma``.

    Special cases: ratio 0 (``ratio_start = ratio_end = 0``) prefixes nothing and gives plain GRPO/Dr.GRPO masks;
    ``ratio_start = ratio_end = 1, schedule = "constant", num_prefixed = 1, prefix_loss = "luffy",
    entropy_top_fraction = 1`` is LUFFY's group (one full demonstration among G, shaped, unmasked).

    Choices where the paper is not explicit (its method section was not readable): the first
    ``num_prefixed`` rollouts of each group are prefixed, default 1 (LUFFY's ``n_prefix = 1``; "a subset of the
    group"); the prefix length is deterministic by default (``length = "fixed"``); prefix tokens keep the PPO ratio
    against π_old ("minimal modification" of the RFT pipeline); the entropy top-k is batch-global (like TRL);
    ``schedule_steps`` should be set to the run's number of steps (default 500). Uses no reference model: the
    sampled and trained distribution is the policy's, and evaluation deploys the policy.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """Prefix-RFT's parameters.

        Attributes:
            ratio_start: prefix fraction ``L/|y*|`` at step 0.
            ratio_end: prefix fraction from ``schedule_steps`` on.
            schedule: ``constant``, ``linear`` or ``cosine`` (Prefix-RFT) from ``ratio_start`` to ``ratio_end``.
            schedule_steps: steps over which the fraction decays (set it to the run's length).
            num_prefixed: how many of the G rollouts of a group get a prefix (capped at G).
            length: ``fixed`` (``L = round(r·|y*|)``) or ``uniform`` (``L = round(u·r·|y*|)``, u ~ U[0, 1)).
            prefix_loss: ``ratio`` (PPO ratio like every token) or ``luffy`` (off-policy shaping ``p/(p + γ)``).
            luffy_gamma: γ of LUFFY's shaping, used when ``prefix_loss = "luffy"``.
            entropy_top_fraction: fraction of prefix tokens, highest behaviour entropy first, that keep gradient.
            entropy_scope: rank prefix-token entropies over the whole ``batch`` or within each ``sequence``.
        """

        ratio_start: float = attrs.field(default=0.95, validator=[v.ge(0.0), v.le(1.0)])
        ratio_end: float = attrs.field(default=0.05, validator=[v.ge(0.0), v.le(1.0)])
        schedule: Shape = attrs.field(default="cosine", validator=v.in_(("constant", "linear", "cosine")))
        schedule_steps: int = attrs.field(default=500, validator=v.ge(0))
        num_prefixed: int = attrs.field(default=1, validator=v.ge(0))
        length: Literal["fixed", "uniform"] = attrs.field(
            default="fixed", validator=v.in_(("fixed", "uniform"))
        )
        prefix_loss: Literal["ratio", "luffy"] = attrs.field(
            default="ratio", validator=v.in_(("ratio", "luffy"))
        )
        luffy_gamma: float = attrs.field(default=0.1, validator=v.gt(0.0))
        entropy_top_fraction: float = attrs.field(default=0.2, validator=[v.ge(0.0), v.le(1.0)])
        entropy_scope: Literal["batch", "sequence"] = attrs.field(
            default="batch", validator=v.in_(("batch", "sequence"))
        )

    config: Config

    @property
    def deploy(self) -> Distribution:
        """Where evaluation samples from: the policy (there is no reference to combine with)."""
        return "policy"

    @property
    def needs_entropy(self) -> bool:
        """Entropy is read when only a strict fraction of prefix tokens keeps gradient (0 < f < 1)."""
        return 0.0 < self.config.entropy_top_fraction < 1.0

    def mix_logits(self, z_policy: Tensor, z_refs: Sequence[Tensor], *, step: int = 0) -> Tensor:
        check_reference_logits("prefix", z_policy, z_refs, 0)
        return z_policy  # [..., V]

    def ratio(self, step: int) -> float:
        """The prefix fraction ``r_t`` at ``step``."""
        c = self.config
        return interpolate(c.schedule, c.ratio_start, c.ratio_end, step, c.schedule_steps)

    def plan_rollouts(
        self, *, step: int, demo_lengths: Tensor, group_size: int, generator: torch.Generator
    ) -> Tensor:
        lengths = demo_lengths.to(torch.long).clamp(min=0)  # [Q]
        plan = torch.zeros(lengths.shape[0], group_size, dtype=torch.long)  # [Q, G]
        k = min(self.config.num_prefixed, group_size)
        ratio = self.ratio(step)
        if k == 0 or ratio <= 0.0:
            return plan
        cap = ratio * lengths.to(torch.float64)  # [Q] r_t·|y*|
        if self.config.length == "fixed":
            target = cap[:, None].expand(-1, k)  # [Q, k]
        else:
            u = torch.rand(lengths.shape[0], k, generator=generator, dtype=torch.float64)  # [Q, k]
            target = u * cap[:, None]  # [Q, k]
        prefix = torch.round(target).to(torch.long)  # [Q, k]
        plan[:, :k] = torch.minimum(prefix.clamp(min=0), lengths[:, None])  # [Q, k]
        return plan

    def loss_masks(
        self, *, mask: Tensor, prefix_mask: Tensor, entropy: Tensor | None, step: int = 0
    ) -> LossMasks:
        prefix = prefix_mask.to(torch.bool) & mask.to(torch.bool)  # [N, S]
        weight = mask.to(torch.float32)  # [N, S]
        frac = self.config.entropy_top_fraction
        if frac < 1.0 and bool(prefix.any()):
            if frac == 0.0:
                keep = torch.zeros_like(prefix)  # [N, S]
            elif entropy is None:
                raise BackendError(
                    "combiner 'prefix' ranks prefix tokens by entropy (entropy_top_fraction "
                    f"{frac!r} < 1) but got entropy=None; pass the behaviour entropy when needs_entropy is True"
                )
            else:
                keep = top_entropy_mask(entropy, prefix, frac, scope=self.config.entropy_scope)  # [N, S]
            weight = weight.masked_fill(prefix & ~keep, 0.0)  # [N, S]
        gamma = self.config.luffy_gamma if self.config.prefix_loss == "luffy" else None
        return LossMasks(token_weight=weight, offpolicy=prefix, offpolicy_gamma=gamma)


def top_entropy_mask(entropy: Tensor, candidates: Tensor, fraction: float, *, scope: str) -> Tensor:
    """The ``⌈fraction·n⌉`` highest-entropy candidate tokens (ties with the last one kept).

    Args:
        entropy: per-token entropy; NaN counts as lowest. Shape: ``[N, S]``.
        candidates: bool tokens to rank (the prefix tokens). Shape: ``[N, S]``.
        fraction: in (0, 1].
        scope: ``batch`` ranks all candidates together (n = all of them); ``sequence`` ranks each row's own.

    Returns:
        ``[N, S]`` bool, a subset of ``candidates``.
    """
    ent = torch.where(candidates, entropy.to(torch.float64), -math.inf).nan_to_num(nan=-math.inf)  # [N, S]
    if scope == "batch":
        n = int(candidates.sum())
        k = math.ceil(fraction * n - _CEIL_SLACK)
        if k <= 0:
            return torch.zeros_like(candidates)  # [N, S]
        threshold = torch.topk(ent.flatten(), k).values[-1]  # []
        return candidates & (ent >= threshold)  # [N, S]
    n_row = candidates.sum(-1)  # [N]
    k_row = torch.ceil(fraction * n_row.to(torch.float64) - _CEIL_SLACK).to(torch.long)  # [N]
    ranked = torch.sort(ent, dim=-1, descending=True).values  # [N, S]
    threshold = ranked.gather(-1, (k_row - 1).clamp(min=0)[:, None])  # [N, 1]
    return candidates & (k_row[:, None] > 0) & (ent >= threshold)  # [N, S]
