"""The seven component kinds and their module-level registries, one line each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmix_core.registry import Kind, Registry

if TYPE_CHECKING:  # annotations only: the interfaces import torch, which listing components must not
    from lmix_core.interfaces import (
        AdvantageEstimator,
        Mixer,
        PolicyCombiner,
        PolicyLoss,
        RewardVerifier,
        RolloutEngine,
        TrainerBackend,
    )

COMBINER = Kind("combiner", "lmix.combiners", "lmix_core.interfaces.combiner:PolicyCombiner")
ADVANTAGE = Kind("advantage", "lmix.advantages", "lmix_core.interfaces.advantage:AdvantageEstimator")
LOSS = Kind("loss", "lmix.losses", "lmix_core.interfaces.loss:PolicyLoss")
MIXER = Kind("mixer", "lmix.mixers", "lmix_core.interfaces.mixer:Mixer")
REWARD = Kind("reward", "lmix.rewards", "lmix_core.interfaces.reward:RewardVerifier")
BACKEND = Kind("backend", "lmix.backends", "lmix_core.interfaces.backend:TrainerBackend")
ROLLOUT_ENGINE = Kind(
    "rollout_engine", "lmix.rollout_engines", "lmix_core.interfaces.rollout_engine:RolloutEngine"
)

KINDS: dict[str, Kind] = {
    k.name: k for k in (COMBINER, ADVANTAGE, LOSS, MIXER, REWARD, BACKEND, ROLLOUT_ENGINE)
}

combiners: Registry[PolicyCombiner] = Registry(COMBINER)
advantages: Registry[AdvantageEstimator] = Registry(ADVANTAGE)
losses: Registry[PolicyLoss] = Registry(LOSS)
mixers: Registry[Mixer] = Registry(MIXER)
rewards: Registry[RewardVerifier] = Registry(REWARD)
backends: Registry[TrainerBackend] = Registry(BACKEND)
rollout_engines: Registry[RolloutEngine] = Registry(ROLLOUT_ENGINE)

REGISTRIES: dict[str, Registry[Any]] = {
    "combiner": combiners,
    "advantage": advantages,
    "loss": losses,
    "mixer": mixers,
    "reward": rewards,
    "backend": backends,
    "rollout_engine": rollout_engines,
}


def kind_named(word: str) -> Kind:
    """Accept ``combiner`` or ``combiners`` (CLI convenience)."""
    for kind in KINDS.values():
        if word in (kind.name, kind.plural):
            return kind
    raise KeyError(word)
