"""PolicyLoss: the per-token policy-gradient objective."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

from lmix_core.interfaces.base import Component
from lmix_core.types import LossInputs, LossOutput

if TYPE_CHECKING:  # annotations only: this module imports no torch
    from torch import Tensor

    from lmix_core.ops.aggregation import StepCounts


class PolicyLoss(Component):
    """A policy-gradient surrogate, aggregated with precomputed token weights.

    The loss of a micro-batch is ``Σ_{i,t} token_weights[i,t] · ℓ[i,t]`` (plus the optional KL and entropy terms
    weighted the same way), so micro-batches of one step add up to the step's loss exactly whatever the
    aggregation mode. :meth:`token_weights` turns the whole step's response mask into those weights.

    Contract (``lmix_core.testing.loss.check_loss``): finite scalar for finite inputs; masked tokens change nothing;
    at ``logp == old_logp`` the gradient equals ``-A · token_weights`` (plus regularisers).
    """

    @property
    def needs_ref_logp(self) -> bool:
        """Whether the loss reads ``ref_logp`` (a KL penalty is on)."""
        return False

    @property
    def needs_entropy(self) -> bool:
        """Whether the loss reads ``entropy`` with gradient (an entropy bonus is on)."""
        return False

    @abstractmethod
    def token_weights(self, mask: Tensor, /, *, max_len: int, counts: StepCounts | None = None) -> Tensor:
        """Aggregation weights for a whole step's RL rows.

        Args:
            mask: ``[N, S]`` bool response tokens of every RL row of the step (on this rank).
            max_len: the constant ``L`` of the ``*-norm`` modes (the response length limit).
            counts: a :class:`lmix_core.ops.aggregation.StepCounts` with the step's counts summed over every
                data-parallel rank (``ranks = W``), or None for one process (the counts of ``mask`` itself).
                With counts, the weights normalise by the global counts and are multiplied by ``W``: backends
                average gradients over ranks, so the averaged gradient is then the global batch's. Contract:
                splitting a step's rows over ranks and concatenating each part's weights (given the summed
                counts) gives ``W`` times the one-process weights.

        Returns:
            ``[N, S]`` float32 weights, 0 outside the mask.
        """

    @abstractmethod
    def __call__(self, inputs: LossInputs, /) -> LossOutput:
        """The micro-batch's loss and detached metrics."""
