"""lmix: post-train LLMs by mixing SFT and RL from registered parts."""

from lmix_core.registries import (
    REGISTRIES,
    advantages,
    backends,
    combiners,
    losses,
    mixers,
    rewards,
    rollout_engines,
)

__version__ = "0.1.0"

__all__ = [
    "REGISTRIES",
    "__version__",
    "advantages",
    "backends",
    "combiners",
    "losses",
    "mixers",
    "rewards",
    "rollout_engines",
]
