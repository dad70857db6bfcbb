"""What every policy loss shares: input checks, masking, the clipped surrogate, LUFFY shaping, the KL and entropy
terms, the weighted sum and the metrics.

A loss's ``__call__`` is ``prepare`` → its own per-token policy-gradient term ``ℓ_pg`` (a :class:`PolicyTerm`,
often :func:`token_ratio` and :func:`clipped_term`) → :func:`finish`, which forms

    ℓ_pg    ← −Â · p/(p + γ)    on off-policy tokens when γ is set (LUFFY; ``lmix_core.ops.offpolicy``)
    ℓ_total = ℓ_pg + kl_coef · c · KL_k(π_θ ‖ π_ref) − entropy_coef · H
    loss    = Σ_{i,t} token_weights_{i,t} · ℓ_total_{i,t}

with ``c = 1`` (``kl_importance = "none"``) or ``c = ρ``, the loss's importance ratio π_θ/π_old *with* gradient
(``kl_importance = "ratio"``; TRL 1.16's default ``use_bias_correction_kl=True``; DeepSeek-V3.2, arXiv 2512.02556);
off-policy (shaped) tokens take ``c = 1``, as they have no behaviour probability.

Values outside ``mask`` are replaced by 0 *before* any arithmetic (:func:`prepare`), so garbage at padded positions
can neither change the loss nor reach the gradient.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import torch
from torch import Tensor

from lmix_core.errors import LmixError
from lmix_core.ops.kl import KLEstimator, KLImportance, kl_penalty
from lmix_core.ops.masked import masked_mean
from lmix_core.ops.offpolicy import apply_shaping, shaped_tokens
from lmix_core.types import LossInputs, LossOutput


class Regularisers(Protocol):
    """The Config fields every built-in loss shares (read by :func:`finish`)."""

    @property
    def kl_coef(self) -> float: ...

    @property
    def kl_estimator(self) -> KLEstimator: ...

    @property
    def kl_importance(self) -> KLImportance: ...

    @property
    def entropy_coef(self) -> float: ...


class Needs(Protocol):
    """What :func:`prepare` asks of a loss: which optional inputs it reads."""

    @property
    def needs_ref_logp(self) -> bool: ...

    @property
    def needs_entropy(self) -> bool: ...


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


@attrs.frozen(kw_only=True)
class PolicyTerm:
    """A loss's own per-token policy-gradient term and its detached metrics, before :func:`finish`.

    Attributes:
        loss: ``[N, S]`` per-token ``ℓ_pg`` of the on-policy objective.
        metrics: the loss's own metrics (``clip_frac``, ``ratio_mean`` ...), 0-dim tensors.
        ratio: ``[N, S]`` (or ``[N, 1]``) importance ratio π_θ/π_old *with* gradient, which weights the KL term
            when ``kl_importance = "ratio"``; None if the loss has none.
    """

    loss: Tensor
    metrics: dict[str, Tensor]
    ratio: Tensor | None = None


def prepare(inputs: LossInputs, *, owner: str, needs: Needs) -> Prepared:
    """Check shapes and required fields, cast to float32, zero everything outside the mask.

    Args:
        inputs: the micro-batch.
        owner: the loss's registered name, for error messages.
        needs: the loss (its ``needs_ref_logp`` and ``needs_entropy``).

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
    if needs.needs_ref_logp and inputs.ref_logp is None:
        raise LmixError(
            f"{owner}: kl_coef > 0 needs LossInputs.ref_logp, but it is None; "
            "the backend must score a frozen reference when the loss's needs_ref_logp is True"
        )
    if needs.needs_entropy and inputs.entropy is None:
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


def token_ratio(x: Prepared, *, log_ratio_clamp: float) -> Tensor:
    """``ρ = exp(clamp(log π_θ − log π_old, −c, c))`` per token (verl's ±20 clamp). Shape: ``[N, S]``."""
    log_ratio = (x.logp - x.old_logp).clamp(-log_ratio_clamp, log_ratio_clamp)  # [N, S]
    return torch.exp(log_ratio)  # [N, S]


def clipped_term(x: Prepared, ratio: Tensor, *, eps_low: float, eps_high: float) -> PolicyTerm:
    """PPO's clipped surrogate ``max(−Â·ρ, −Â·clip(ρ, 1 − ε_low, 1 + ε_high))`` per token.

    Args:
        x: the prepared inputs (its advantages and on-policy tokens).
        ratio: ``[N, S]`` importance ratio, token-level (PPO) or sequence-level broadcast to tokens (GSPO).
        eps_low: ε_low.
        eps_high: ε_high.

    Returns:
        The term, with metrics ``clip_frac`` (tokens where the clip is active) and ``ratio_mean``, both means over
        the on-policy tokens.
    """
    a = x.advantages  # [N, S]
    pg1 = -a * ratio  # [N, S]
    pg2 = -a * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # [N, S]
    metrics = {
        "clip_frac": masked_mean((pg2 > pg1).float(), x.onpolicy),
        "ratio_mean": masked_mean(ratio.detach(), x.onpolicy),
    }
    return PolicyTerm(loss=torch.maximum(pg1, pg2), metrics=metrics, ratio=ratio)  # [N, S]


def finish(term: PolicyTerm, x: Prepared, config: Regularisers) -> LossOutput:
    """Shape off-policy tokens, add the regularisers, aggregate with the token weights, attach metrics.

    Args:
        term: the loss's per-token ``ℓ_pg`` and its own metrics.
        x: the prepared inputs.
        config: the loss's Config: ``kl_coef`` (0 = off), ``kl_estimator`` (see ``lmix_core.ops.kl``),
            ``kl_importance`` (``none`` or ``ratio``) and ``entropy_coef`` (0 = off).

    Returns:
        The scalar loss ``Σ w · ℓ_total`` and the metrics: the term's, plus ``kl`` (when on: the mean estimate,
        not importance-weighted) and ``entropy`` (when given).

    Raises:
        LmixError: ``kl_importance = "ratio"`` with a term that carries no ratio.
    """
    metrics = dict(term.metrics)
    total = apply_shaping(
        term.loss, logp=x.logp, advantages=x.advantages, shaped=x.shaped, gamma=x.gamma
    )  # [N, S]
    if config.kl_coef > 0 and x.ref_logp is not None:
        kl = kl_penalty(x.logp, x.ref_logp, config.kl_estimator)  # [N, S]
        weighted = kl  # [N, S]
        if config.kl_importance == "ratio":
            if term.ratio is None:
                raise LmixError(
                    "kl_importance = 'ratio' needs the loss's importance ratio, but its term has none"
                )
            rho = torch.where(x.shaped, torch.ones_like(kl), term.ratio.expand_as(kl))  # [N, S]
            weighted = kl * rho  # [N, S]
        total = total + config.kl_coef * weighted  # [N, S]
        metrics["kl"] = masked_mean(kl.detach(), x.mask)
    if x.entropy is not None:
        if config.entropy_coef > 0:
            total = total - config.entropy_coef * x.entropy  # [N, S]
        metrics["entropy"] = masked_mean(x.entropy.detach(), x.mask)
    total = torch.where(x.mask, total, torch.zeros_like(total))  # [N, S]
    loss = (x.weights * total).sum()  # []
    return LossOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})
