"""Per-token estimators of KL(π_θ ‖ π_ref) from sampled-token log-probs (Schulman, "Approximating KL
divergence", 2020; verl 0.9.1 ``kl_penalty``; TRL 1.16's ``beta`` term).

With ``δ = log π_ref(a) − log π_θ(a)`` for a token ``a ~ π_θ``:

* ``k1 = −δ = log π_θ − log π_ref``: unbiased, high variance, can be negative (verl ``kl``/``k1``).
* ``k2 = ½ δ²``: biased, low variance, ≥ 0 (verl ``mse``/``k2``).
* ``k3 = e^δ − δ − 1``: unbiased, low variance, ≥ 0 (verl ``low_var_kl``/``k3``, TRL's and the GRPO paper's term).
* ``k1+``, ``k3+``: the value of k1 or k3 with the gradient of k2 (straight-through, verl 0.9.1's ``+`` suffix:
  ``k2 − sg[k2] + sg[k]``).

Following verl, ``k3`` clamps ``δ`` to ``[−20, 20]`` before exponentiating and the result to at most 10 (TRL 1.16
clamps neither; the two agree wherever ``|δ| ≤ 20`` and ``k3 ≤ 10``). All are 0 (and all but k1 have zero gradient)
when ``log π_θ = log π_ref``.

**Gradient as a loss term, on-policy.** Used as ``kl_coef · k(a)`` in a loss and differentiated with the sampled
tokens held fixed, the expected gradient over ``a ~ π_θ`` is (``E_π[∇log π] = 0``):

* k1: ``E[∇log π_θ] = 0``: zero mean, no regularisation at all, only noise;
* k2, ``k1+``, ``k3+``: ``E[(log π_θ − log π_ref) ∇log π_θ] = ∇ KL(π_θ ‖ π_ref)``, the reverse-KL gradient;
* k3: ``E[(1 − π_ref/π_θ) ∇log π_θ] = −Σ_a π_ref(a) ∇log π_θ(a) = ∇ KL(π_ref ‖ π_θ)``, the *forward*-KL gradient,
  although its value estimates the reverse KL;
* k1 or k3 multiplied by the importance ratio ``π_θ/π_old`` with gradient (``kl_importance = "ratio"``, TRL 1.16's
  ``use_bias_correction_kl``) at ``π_old = π_θ``: ``E[k ∇log π_θ + ∇k] = ∇ E_{π_θ}[k] = ∇ KL(π_θ ‖ π_ref)``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lmix_core.errors import LmixError

KLEstimator = Literal["k1", "k2", "k3", "k1+", "k3+"]
KL_ESTIMATORS: tuple[str, ...] = typing.get_args(KLEstimator)

#: How the KL term is weighted: not at all, or by the loss's importance ratio π_θ/π_old (with gradient).
KLImportance = Literal["none", "ratio"]
KL_IMPORTANCE: tuple[str, ...] = typing.get_args(KLImportance)

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


def _straight_through_k2(value: Tensor, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``value`` forward, the gradient of k2 backward: ``k2 − sg[k2] + sg[value]``."""
    grad_source = k2(logp, ref_logp)  # [N, S]
    return grad_source - grad_source.detach() + value.detach()  # [N, S]


def k1_plus(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1's value with k2's gradient (verl ``k1+``)."""
    return _straight_through_k2(k1(logp, ref_logp), logp, ref_logp)  # [N, S]


def k3_plus(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3's value (with verl's clamps) with k2's gradient (verl ``k3+``/``low_var_kl+``)."""
    return _straight_through_k2(k3(logp, ref_logp), logp, ref_logp)  # [N, S]


_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": k1,
    "k2": k2,
    "k3": k3,
    "k1+": k1_plus,
    "k3+": k3_plus,
}


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator) -> Tensor:
    """Per-token KL estimate of the named kind.

    Args:
        logp: log π_θ of the sampled tokens (with gradient). Shape: ``[N, S]``.
        ref_logp: log π_ref of the same tokens (constant). Shape: ``[N, S]``.
        estimator: one of :data:`KL_ESTIMATORS`.

    Returns:
        ``[N, S]`` per-token estimates.
    """
    fn = _ESTIMATORS.get(estimator)
    if fn is None:
        raise LmixError(
            f"'kl_estimator' must be one of {', '.join(map(repr, KL_ESTIMATORS))} (got {estimator!r})"
        )
    return fn(logp, ref_logp)  # [N, S]
