"""PolicyCombiner: the distribution that is sampled *and* trained."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.base import Component
from lmix_core.types import Distribution


@attrs.frozen(kw_only=True)
class LossMasks:
    """A combiner's per-token say in the loss.

    Attributes:
        token_weight: ``[N, S]`` float, multiplies each token's loss weight (0 drops the token from the gradient).
        offpolicy: ``[N, S]`` bool, tokens that were forced, not sampled.
        offpolicy_gamma: LUFFY shaping constant for off-policy tokens, or None for the ordinary ratio.
    """

    token_weight: Tensor
    offpolicy: Tensor
    offpolicy_gamma: float | None = None


def deploy_field() -> Any:
    """The ``deploy`` Config field of a combiner that lets the recipe choose (read it back in :attr:`deploy`)."""
    return attrs.field(default="combined", validator=attrs.validators.in_(("combined", "policy")))


class PolicyCombiner(Component):
    """Builds the combined next-token distribution from the trainable policy and frozen references.

    One uniform call per duty:
        * :meth:`mix_logits`: combined logits from the policy's and the references' logits (sampler and loss);
        * :meth:`plan_rollouts`: which rollouts of a group get a forced demonstration prefix, and how long;
        * :meth:`loss_masks`: per-token weights and off-policy marks for the loss.

    and three declarations the loop reads: :attr:`num_references`, :attr:`needs_entropy` and :attr:`deploy`.

    Contract (``lmix_core.testing.combiner.check_combiner``): ``mix_logits`` keeps shape and dtype, is finite where
    its inputs are, is row-wise (commutes with permuting rows), invariant to adding a per-row constant to any input,
    and passes no gradient to the references.
    """

    @property
    def num_references(self) -> int:
        """How many frozen reference policies ``mix_logits`` takes (0: the policy alone)."""
        return 0

    @property
    def deploy(self) -> Distribution:
        """What evaluation samples from when the recipe says ``eval.deploy = "auto"``.

        ``"combined"`` (default) is the distribution that was trained, ``softmax(mix_logits(z_θ, z_refs)/T)``, which
        needs every reference at inference; ``"policy"`` is the trained policy alone. Combiners that have a choice
        (``logit_average``, ``weighted``) read it from their Config.
        """
        return "combined"

    @abstractmethod
    def mix_logits(self, z_policy: Tensor, z_refs: Sequence[Tensor], *, step: int = 0) -> Tensor:
        """Combined logits.

        Args:
            z_policy: trainable policy logits. Shape: ``[..., V]``.
            z_refs: ``num_references`` reference logits, each ``[..., V]``; treated as constants.
            step: the loop step (``0 … train.steps − 1``), for scheduled combiners; the same for sampling,
                scoring and every optimiser step on a step's rollouts.

        Returns:
            ``[..., V]`` logits of the combined distribution (before the sampling temperature).
        """

    def plan_rollouts(
        self, *, step: int, demo_lengths: Tensor, group_size: int, generator: torch.Generator
    ) -> Tensor:
        """Forced demonstration-prefix lengths, in tokens.

        Args:
            step: the loop step.
            demo_lengths: ``[Q]`` int64 token lengths of each question's demonstration (0 when there is none).
            group_size: rollouts per question ``G``.
            generator: seeded CPU generator for any random draw.

        Returns:
            ``[Q, G]`` int64 with ``0 <= L <= demo_lengths[q]``; 0 means an ordinary on-policy rollout.
        """
        return torch.zeros(demo_lengths.shape[0], group_size, dtype=torch.long)  # [Q, G]

    def loss_masks(
        self, *, mask: Tensor, prefix_mask: Tensor, entropy: Tensor | None, step: int = 0
    ) -> LossMasks:
        """Per-token loss weights and off-policy marks.

        Args:
            mask: ``[N, S]`` bool response tokens.
            prefix_mask: ``[N, S]`` bool forced prefix tokens (a subset of ``mask``).
            entropy: ``[N, S]`` entropy of the behaviour distribution, or None when ``needs_entropy`` is False.
            step: the loop step.
        """
        return LossMasks(token_weight=mask.float(), offpolicy=prefix_mask.clone())  # [N, S], [N, S]

    @property
    def needs_entropy(self) -> bool:
        """Whether :meth:`loss_masks` reads the behaviour entropy."""
        return False
