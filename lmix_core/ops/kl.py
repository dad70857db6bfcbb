"""Per-token estimators of KL(π_θ ‖ π_ref) from sampled-token log-probs (Schulman, "Approximating KL
divergence", 2020; verl ``kl_penalty``, TRL's ``beta`` term).

With ``δ = log π_ref(a) − log π_θ(a)`` for a token ``a ~ π_θ``:

* ``k1 = −δ = log π_θ − log π_ref``: unbiased, high variance, can be negative.
* ``k2 = ½ δ²``: biased, low variance, ≥ 0 (verl's ``mse``).
* ``k3 = e^δ − δ − 1``: unbiased, low variance, ≥ 0 (verl's ``low_var_kl``, TRL's and the GRPO paper's term).

Following verl, ``k3`` clamps ``δ`` to ``[−20, 20]`` before exponentiating and the result to at most 10.
All three are 0 (and ``k2``, ``k3`` have zero gradient) when ``log π_θ = log π_ref``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lmix_core.errors import LmixError

KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = typing.get_args(KLEstimator)

#: verl's clamps for k3: the log-ratio before exp, and the estimate after.
K3_LOG_RATIO_CLAMP = 20.0
K3_MAX = 10.0


def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``log π_θ − log π_ref``, elementwise."""
    return logp - ref_logp  # [N, S]


def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``½ (log π_θ − log π_ref)²``, elementwise."""
    d = logp - ref_logp  # [N, S]
    return 0.5 * d * d  # [N, S]


def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``π_ref/π_θ − log(π_ref/π_θ) − 1``, elementwise, with verl's clamps."""
    delta = (ref_logp - logp).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)  # [N, S]
    return (torch.exp(delta) - delta - 1.0).clamp(max=K3_MAX)  # [N, S]


_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": k1, "k2": k2, "k3": k3}


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator) -> Tensor:
    """Per-token KL estimate of the named kind.

    Args:
        logp: log π_θ of the sampled tokens (with gradient). Shape: ``[N, S]``.
        ref_logp: log π_ref of the same tokens (constant). Shape: ``[N, S]``.
        estimator: ``k1``, ``k2`` or ``k3``.

    Returns:
        ``[N, S]`` per-token estimates.
    """
    fn = _ESTIMATORS.get(estimator)
    if fn is None:
        raise LmixError(
            f"'kl_estimator' must be one of {', '.join(map(repr, KL_ESTIMATORS))} (got {estimator!r})"
        )
    return fn(logp, ref_logp)  # [N, S]
