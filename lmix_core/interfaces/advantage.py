"""AdvantageEstimator: rewards in, per-token advantages out."""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

from torch import Tensor

from lmix_core.interfaces.base import Component
from lmix_core.types import AdvantageInputs

#: A reward transform an estimator may declare its output invariant to: ``shift`` is r → r + b (any b),
#: ``scale`` is r → a·r (a > 0).
Invariance = Literal["shift", "scale"]
#: Every :data:`Invariance` name, in the order the contract suite checks them.
INVARIANCES: tuple[Invariance, ...] = ("shift", "scale")


class AdvantageEstimator(Component):
    """Turns outcome rewards and group ids into per-token advantages.

    Contract (``lmix_core.testing.advantage.check_advantage_estimator``): output is ``[N, S]`` float32, zero outside
    ``mask``, finite for finite rewards, and NaN rewards produce a defined (finite) result documented per estimator.
    Every transform named in :attr:`invariances` leaves the output unchanged (up to eps) on batches whose groups all
    hold >= 2 valid rewards; the suite checks each declared name the same way for every estimator.
    """

    @property
    def invariances(self) -> frozenset[Invariance]:
        """Reward transforms that leave the advantages unchanged on groups of >= 2 valid rewards.

        A subset of :data:`INVARIANCES`; it may depend on the Config (GRPO with ``scale = "none"`` keeps only
        ``shift``). Default: none, which promises nothing.
        """
        return frozenset()

    @abstractmethod
    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        """Advantages.

        Args:
            inputs: rewards ``[N]``, group ids ``[N]`` and the response mask ``[N, S]``.

        Returns:
            ``[N, S]`` float32 advantages, 0 outside the mask.
        """
