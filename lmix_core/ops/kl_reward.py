r"""A KL penalty in the reward (verl's ``algorithm.use_kl_in_reward``), applied before the advantage estimator.

verl's ``apply_kl_penalty`` subtracts ``β·KL_t`` from every response token's reward, ``KL_t`` the chosen
estimator of ``log π_old(a_t) − log π_ref(a_t)`` at the sampled token, and its outcome estimators (GRPO, RLOO,
Dr. GRPO, OPO, REINFORCE++-baseline) then read the sequence score as the sum of the token rewards. lmix's
estimators take one reward per rollout, so the same thing is

.. math::

    r'_i = r_i − β \sum_t m_{i,t}\,\mathrm{KL}_{i,t}

with ``m`` the response mask. The per-token estimators are :mod:`lmix_core.ops.kl`'s (``k1`` is verl's default
``kl``, ``k2`` its ``mse``, ``k3`` its ``low_var_kl``). There is no gradient through the penalty: it is part of
the reward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmix_core.ops.kl import KLEstimator, kl_penalty

__all__ = ["kl_penalised_rewards"]


def kl_penalised_rewards(
    rewards: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, *, coef: float, estimator: KLEstimator
) -> Tensor:
    """``r − coef · Σ_t mask · KL_t`` per rollout.

    Args:
        rewards: ``[N]`` sequence rewards (NaN stays NaN: a missing reward is not made up by the penalty).
        logp: ``[N, S]`` log-probs of the sampled tokens under the sampling distribution (π_old).
        ref_logp: ``[N, S]`` log-probs of the same tokens under the reference.
        mask: ``[N, S]`` response tokens.
        coef: β ≥ 0.
        estimator: ``k1``, ``k2`` or ``k3`` (:func:`lmix_core.ops.kl.kl_penalty`).

    Returns:
        ``[N]`` float32 penalised rewards.
    """
    with torch.no_grad():
        kl = kl_penalty(logp.float(), ref_logp.float(), estimator)  # [N, S]
        kl = torch.where(mask.bool(), kl, torch.zeros_like(kl))  # [N, S]
        return (rewards.float() - coef * kl.sum(-1)).to(torch.float32)  # [N]
