"""One abstract interface per component kind."""

from lmix_core.interfaces.advantage import AdvantageEstimator
from lmix_core.interfaces.backend import BackendContext, Objective, TrainerBackend
from lmix_core.interfaces.base import Component
from lmix_core.interfaces.combiner import PolicyCombiner
from lmix_core.interfaces.loss import PolicyLoss
from lmix_core.interfaces.mixer import Mixer
from lmix_core.interfaces.reward import RewardVerifier, Role

__all__ = [
    "AdvantageEstimator",
    "BackendContext",
    "Component",
    "Mixer",
    "Objective",
    "PolicyCombiner",
    "PolicyLoss",
    "RewardVerifier",
    "Role",
    "TrainerBackend",
]
