"""The trainable policy alone: the baseline combiner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import attrs
from torch import Tensor

from lmix_core.errors import BackendError
from lmix_core.interfaces.combiner import PolicyCombiner
from lmix_core.types import Distribution


@final
class Policy(PolicyCombiner):
    r"""``π = softmax(z_θ / T)``: sample and train the policy itself, with no reference and no prefixes.

    This is plain GRPO/PPO's behaviour policy (TRL ``GRPOTrainer``, verl's actor). ``mix_logits`` returns
    ``z_policy`` unchanged (the very tensor), ``plan_rollouts`` prefixes nothing and ``loss_masks`` keeps every
    response token with weight 1. The combined distribution and the trained policy coincide, so ``deploy`` is
    ``"policy"``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """No parameters."""

    config: Config

    @property
    def deploy(self) -> Distribution:
        """Where evaluation samples from: the policy (the same as the combined distribution here)."""
        return "policy"

    def mix_logits(self, z_policy: Tensor, z_refs: Sequence[Tensor], *, step: int = 0) -> Tensor:
        if len(z_refs) != 0:
            raise BackendError(f"combiner 'policy' takes no reference logits (got {len(z_refs)})")
        return z_policy  # [..., V]
