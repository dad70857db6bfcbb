"""AdvantageEstimator: rewards in, per-token advantages out."""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor

from lmix_core.interfaces.base import Component
from lmix_core.types import AdvantageInputs


class AdvantageEstimator(Component):
    """Turns outcome rewards and group ids into per-token advantages.

    Contract (``lmix_core.testing.advantage.check_advantage_estimator``): output is ``[N, S]`` float32, zero outside
    ``mask``, finite for finite rewards, and NaN rewards produce a defined (finite) result documented per estimator.
    """

    @abstractmethod
    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        """Advantages.

        Args:
            inputs: rewards ``[N]``, group ids ``[N]`` and the response mask ``[N, S]``.

        Returns:
            ``[N, S]`` float32 advantages, 0 outside the mask.
        """
