"""``entropy_gated``: a logit mixture that leans on the reference where the policy is unsure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import final

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.combiner import PolicyCombiner


def _unit(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"'{attribute.name}' must be in [0, 1] (got {value!r})")


@final
class EntropyGated(PolicyCombiner):
    r"""Per-position logit mixture whose weight on the frozen reference grows with the policy's entropy.

    .. code-block:: text

        H      = −Σ_v softmax(z_θ)_v · log softmax(z_θ)_v              policy entropy at the position
        α(H)   = α_max − (α_max − α_min) · H / log V                     H / log V ∈ [0, 1]
        z      = sg(α) · z_θ + (1 − sg(α)) · sg(z_ref)

    A confident policy (H → 0) keeps ``α = α_max``; a uniform one (H = log V) gets ``α = α_min``, i.e. the most
    weight ``1 − α_min`` on the reference. This is the logit average of policy and frozen reference ("Complementing
    reinforcement learning with SFT through logit averaging in the post training of LLMs", Gan & Zhu, arXiv 2605.20555) with
    a per-position weight instead of a fixed one. The gate's form (linear in normalised entropy) and its defaults
    ``α_max = 1``, ``α_min = 0.5`` are this example plugin's choices [U], not taken from a paper.

    ``α`` is detached (``sg``): the gradient reaches the policy only through ``α · z_θ``, so training does not learn
    to game the gate by changing its entropy, and the reference receives none. Adding a constant to a position's
    logits changes neither ``H`` nor the softmax of ``z`` (``α`` is constant over the vocabulary). A term whose
    weight is 0 (``α = 1`` or ``α = 0``) is dropped rather than multiplied by 0, so ``−inf`` (masked) logits never
    produce NaN; otherwise the support is the intersection of the two supports.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """Parameters of :class:`EntropyGated`.

        Attributes:
            alpha_max: policy weight where the policy is certain (H = 0).
            alpha_min: policy weight where the policy is uniform (H = log V); must be <= ``alpha_max``.
        """

        alpha_max: float = attrs.field(default=1.0, validator=_unit)
        alpha_min: float = attrs.field(default=0.5, validator=_unit)

        def __attrs_post_init__(self) -> None:
            if self.alpha_min > self.alpha_max:
                raise ValueError(f"'alpha_min' must be <= alpha_max={self.alpha_max} (got {self.alpha_min})")

    config: Config

    @property
    def num_references(self) -> int:
        """One frozen reference policy."""
        return 1

    def alpha(self, z_policy: Tensor) -> Tensor:
        """The detached policy weight ``α(H)`` at each position.

        Args:
            z_policy: policy logits. Shape: ``[..., V]``.

        Returns:
            ``[..., 1]`` float32 weights in ``[alpha_min, alpha_max]``.
        """
        cfg = self.config
        z = z_policy.detach().float()  # [..., V]
        logp = torch.log_softmax(z, dim=-1)  # [..., V]
        plogp = torch.where(logp > -math.inf, logp.exp() * logp, torch.zeros_like(logp))  # [..., V]
        entropy = -plogp.sum(dim=-1, keepdim=True)  # [..., 1]
        log_v = math.log(z.shape[-1]) if z.shape[-1] > 1 else 1.0
        h = (entropy / log_v).clamp(0.0, 1.0)  # [..., 1]
        return cfg.alpha_max - (cfg.alpha_max - cfg.alpha_min) * h  # [..., 1]

    def mix_logits(self, z_policy: Tensor, z_refs: Sequence[Tensor], *, step: int = 0) -> Tensor:
        """``α · z_θ + (1 − α) · sg(z_ref)`` with the entropy-gated ``α`` (see the class docstring).

        Args:
            z_policy: trainable policy logits. Shape: ``[..., V]``.
            z_refs: one reference's logits, ``[..., V]``; treated as a constant.
            step: unused (the gate has no schedule).

        Returns:
            ``[..., V]`` combined logits in ``z_policy``'s dtype.
        """
        if len(z_refs) != 1:
            raise ValueError(f"entropy_gated mixes the policy with exactly 1 reference (got {len(z_refs)})")
        z_ref = z_refs[0].detach()  # [..., V]
        if z_ref.shape != z_policy.shape:
            raise ValueError(
                f"reference logits {tuple(z_ref.shape)} do not match policy {tuple(z_policy.shape)}"
            )
        a = self.alpha(z_policy).to(z_policy.dtype)  # [..., 1]
        zero = torch.zeros((), dtype=z_policy.dtype, device=z_policy.device)  # []
        policy_term = torch.where(a > 0, a * z_policy, zero)  # [..., V]
        ref_term = torch.where(a < 1, (1.0 - a) * z_ref.to(z_policy.dtype), zero)  # [..., V]
        return policy_term + ref_term  # [..., V]
