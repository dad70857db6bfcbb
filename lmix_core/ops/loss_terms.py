"""What every policy loss shares: input checks, masking, the KL and entropy terms, the weighted sum and metrics.

Each loss computes its own per-token policy-gradient term ``ℓ_pg``; :func:`finish` then forms

    ℓ_total = ℓ_pg + kl_coef · KL_k(π_θ ‖ π_ref) − entropy_coef · H
    loss    = Σ_{i,t} token_weights_{i,t} · ℓ_total_{i,t}

Values outside ``mask`` are replaced by 0 *before* any arithmetic (:func:`prepare`), so garbage at padded positions
can neither change the loss nor reach the gradient.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from lmix_core.errors import LmixError
from lmix_core.ops.kl import KLEstimator, kl_penalty
from lmix_core.ops.masked import masked_mean
from lmix_core.ops.offpolicy import shaped_tokens
from lmix_core.types import LossInputs, LossOutput


@attrs.frozen(kw_only=True)
class Prepared:
    """A micro-batch's loss inputs, checked, in float32, zeroed outside the mask.

    Attributes:
        logp: ``[N, S]`` with gradient.
        old_logp: ``[N, S]`` detached.
        advantages: ``[N, S]`` detached.
        mask: ``[N, S]`` bool.
        weights: ``[N, S]`` token weights, 0 outside the mask.
        ref_logp: ``[N, S]`` detached, or None.
        entropy: ``[N, S]`` with gradient, or None.
        shaped: ``[N, S]`` bool, off-policy tokens that take LUFFY's shaping.
        onpolicy: ``[N, S]`` bool, masked tokens that take the loss's own (ratio) objective.
        gamma: LUFFY's γ, or None.
    """

    logp: Tensor
    old_logp: Tensor
    advantages: Tensor
    mask: Tensor
    weights: Tensor
    ref_logp: Tensor | None
    entropy: Tensor | None
    shaped: Tensor
    onpolicy: Tensor
    gamma: float | None


def _zero_out(x: Tensor, mask: Tensor) -> Tensor:
    x = x.to(torch.float32)  # [N, S]
    return torch.where(mask, x, torch.zeros_like(x))  # [N, S]


def prepare(inputs: LossInputs, *, owner: str, needs_ref_logp: bool, needs_entropy: bool) -> Prepared:
    """Check shapes and required fields, cast to float32, zero everything outside the mask.

    Raises:
        LmixError: on shape mismatches, a missing ``ref_logp``/``entropy`` the loss needs, or ``γ <= 0``.
    """
    shape = tuple(inputs.logp.shape)
    if len(shape) != 2:
        raise LmixError(f"{owner}: 'logp' must be [N, S] (got shape {shape})")
    named = {
        "old_logp": inputs.old_logp,
        "advantages": inputs.advantages,
        "mask": inputs.mask,
        "token_weights": inputs.token_weights,
        "ref_logp": inputs.ref_logp,
        "entropy": inputs.entropy,
        "offpolicy": inputs.offpolicy,
    }
    for name, t in named.items():
        if t is not None and tuple(t.shape) != shape:
            raise LmixError(f"{owner}: {name!r} must have the shape of 'logp' {shape} (got {tuple(t.shape)})")
    if needs_ref_logp and inputs.ref_logp is None:
        raise LmixError(
            f"{owner}: kl_coef > 0 needs LossInputs.ref_logp, but it is None; "
            "the backend must score a frozen reference when the loss's needs_ref_logp is True"
        )
    if needs_entropy and inputs.entropy is None:
        raise LmixError(
            f"{owner}: entropy_coef > 0 needs LossInputs.entropy, but it is None; "
            "the backend must return entropies with gradient when the loss's needs_entropy is True"
        )
    gamma = inputs.offpolicy_gamma
    if gamma is not None and not gamma > 0:
        raise LmixError(f"{owner}: 'offpolicy_gamma' must be > 0 or None (got {gamma!r})")
    mask = inputs.mask.to(torch.bool)  # [N, S]
    shaped = shaped_tokens(mask, inputs.offpolicy, gamma)  # [N, S]
    return Prepared(
        logp=_zero_out(inputs.logp, mask),
        old_logp=_zero_out(inputs.old_logp.detach(), mask),
        advantages=_zero_out(inputs.advantages.detach(), mask),
        mask=mask,
        weights=_zero_out(inputs.token_weights.detach(), mask),
        ref_logp=None if inputs.ref_logp is None else _zero_out(inputs.ref_logp.detach(), mask),
        entropy=None if inputs.entropy is None else _zero_out(inputs.entropy, mask),
        shaped=shaped,
        onpolicy=mask & ~shaped,
        gamma=gamma,
    )


def finish(
    pg_loss: Tensor,
    x: Prepared,
    *,
    kl_coef: float,
    kl_estimator: KLEstimator,
    entropy_coef: float,
    metrics: dict[str, Tensor],
) -> LossOutput:
    """Add the regularisers, aggregate with the token weights, attach metrics.

    Args:
        pg_loss: ``[N, S]`` per-token policy-gradient loss.
        x: the prepared inputs.
        kl_coef: weight of the KL penalty (0 = off).
        kl_estimator: ``k1``, ``k2`` or ``k3``.
        entropy_coef: weight of the entropy bonus (0 = off).
        metrics: the loss's own detached metrics; ``kl`` (when on) and ``entropy`` (when given) are added.

    Returns:
        The scalar loss ``Σ w · ℓ_total`` and the metrics.
    """
    total = pg_loss  # [N, S]
    if kl_coef > 0 and x.ref_logp is not None:
        kl = kl_penalty(x.logp, x.ref_logp, kl_estimator)  # [N, S]
        total = total + kl_coef * kl  # [N, S]
        metrics["kl"] = masked_mean(kl.detach(), x.mask)
    if x.entropy is not None:
        if entropy_coef > 0:
            total = total - entropy_coef * x.entropy  # [N, S]
        metrics["entropy"] = masked_mean(x.entropy.detach(), x.mask)
    total = torch.where(x.mask, total, torch.zeros_like(total))  # [N, S]
    loss = (x.weights * total).sum()  # []
    return LossOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})
