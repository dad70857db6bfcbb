"""One abstract interface per component kind.

The names are imported lazily (PEP 562), so that importing one interface module, e.g.
``lmix_core.interfaces.reward`` in a reward worker process, does not import torch through the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_MODULE_OF = {
    "AdvantageEstimator": "advantage",
    "BackendContext": "backend",
    "Objective": "backend",
    "TrainerBackend": "backend",
    "Component": "base",
    "PolicyCombiner": "combiner",
    "PolicyLoss": "loss",
    "Mixer": "mixer",
    "RewardVerifier": "reward",
    "EngineContext": "rollout_engine",
    "RolloutEngine": "rollout_engine",
    "SharedModels": "rollout_engine",
    "Role": "reward",
}

if TYPE_CHECKING:
    from lmix_core.interfaces.advantage import AdvantageEstimator
    from lmix_core.interfaces.backend import BackendContext, Objective, TrainerBackend
    from lmix_core.interfaces.base import Component
    from lmix_core.interfaces.combiner import PolicyCombiner
    from lmix_core.interfaces.loss import PolicyLoss
    from lmix_core.interfaces.mixer import Mixer
    from lmix_core.interfaces.reward import RewardVerifier, Role
    from lmix_core.interfaces.rollout_engine import EngineContext, RolloutEngine, SharedModels


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


__all__ = [
    "AdvantageEstimator",
    "BackendContext",
    "Component",
    "EngineContext",
    "Mixer",
    "Objective",
    "PolicyCombiner",
    "PolicyLoss",
    "RewardVerifier",
    "Role",
    "RolloutEngine",
    "SharedModels",
    "TrainerBackend",
]
