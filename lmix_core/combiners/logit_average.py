"""Logit averaging of the trainable policy with a frozen reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import attrs
from attrs import validators as v
from torch import Tensor

from lmix_core.interfaces.combiner import PolicyCombiner, deploy_field
from lmix_core.ops.mixed_logprobs import check_reference_logits, geometric_mix
from lmix_core.types import Distribution


@final
class LogitAverage(PolicyCombiner):
    r"""Logit averaging inside GRPO (Gan & Zhu, arXiv 2605.20555).

    .. math::

        z_{mix} = α·z_θ + (1 − α)·sg(z_{ref}),\qquad π_{mix} = softmax(z_{mix} / T)
                ∝ π_θ^{α} · π_{ref}^{1−α}

    a normalised geometric (product-of-experts) mixture of the trainable policy and a frozen reference (e.g. the
    SFT model). Rollouts are sampled from π_mix and the PPO ratio is taken on π_mix's probabilities
    (``π_mix,θ / π_mix,θ_old``, not ``(π_θ/π_θ_old)^α``); the sampling temperature is applied by the backend after
    mixing. The gradient reaches z_θ only: ``∂ log π_mix(a)/∂z_θ = α·(e_a − π_mix)``, and α = 0 gives no gradient
    at all. α multiplies the gradient, but that does not scale the effective learning rate under AdamW (the
    backends' optimiser): Adam's step ``m/(√v + ε)`` is invariant to a constant gradient scale, up to ε and to
    where gradient-norm clipping engages. What α does change is how far a step moves π_mix (a parameter update
    that moves z_θ by Δ moves z_mix by α·Δ), and the RL gradient's weight against any other term that shares the
    optimiser step, such as an SFT loss.

    [U] choices (the paper's method section was not readable): α is a parameter, default
    0.5 ("averaging", "fixed equal weighting"); evaluation deploys the mix by default (``deploy = "combined"``,
    which needs both models at inference) and can deploy the trained policy alone (``deploy = "policy"``). No KL
    term: the canonical KL-GRPO baseline is the ``policy`` combiner with a KL penalty in the loss.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """Logit averaging's parameters.

        Attributes:
            alpha: the policy's weight α in ``α·z_θ + (1 − α)·z_ref``.
            deploy: what evaluation samples from: ``combined`` (π_mix) or ``policy`` (π_θ alone).
        """

        alpha: float = attrs.field(default=0.5, validator=[v.ge(0.0), v.le(1.0)])
        deploy: Distribution = deploy_field()

    config: Config

    @property
    def deploy(self) -> Distribution:
        """Where evaluation samples from (``Config.deploy``)."""
        return self.config.deploy

    @property
    def num_references(self) -> int:
        return 1

    def mix_logits(self, z_policy: Tensor, z_refs: Sequence[Tensor], *, step: int = 0) -> Tensor:
        check_reference_logits("logit_average", z_policy, z_refs, 1)
        return geometric_mix(z_policy, z_refs, alpha=self.config.alpha, ref_weights=(1.0,))  # [..., V]
