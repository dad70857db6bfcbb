"""Plain (unclipped) policy gradient, as HPT and LUFFY train with ``loss_remove_clip=True``."""

from __future__ import annotations

from typing import Literal, final

import attrs
from torch import Tensor

from lmix_core.interfaces.loss import PolicyLoss
from lmix_core.ops.aggregation import AGG_MODES, AGG_ROWS, AggMode, AggRows, StepCounts, aggregation_weights
from lmix_core.ops.kl import KL_ESTIMATORS, KL_IMPORTANCE, KLEstimator, KLImportance
from lmix_core.ops.loss_terms import PolicyTerm, finish, prepare, token_ratio
from lmix_core.ops.masked import masked_mean
from lmix_core.types import LossInputs, LossOutput


@final
class PG(PolicyLoss):
    r"""Policy gradient with no clip:

        form = "ratio" (default):  ℓ_pg = −Â · ρ,   ρ = exp(clamp(log π_θ − log π_old, ±c_log))
        form = "logp":             ℓ_pg = −Â · log π_θ              (REINFORCE; verl's ``gpg`` loss)
        ℓ = ℓ_pg + kl_coef · KL_k(π_θ ‖ π_ref) − entropy_coef · H,     loss = Σ w · ℓ

    The ``ratio`` form is what LUFFY's and HPT's released scripts optimise (``compute_token_on_off_policy_loss``
    with ``loss_remove_clip=True``: ``−A·ratio``): its gradient −Â·ρ·∇log π is importance-weighted when several
    inner steps reuse a batch. Both forms have the gradient −Â·∇log π at ρ = 1; the ``logp`` form ignores π_old.
    HPT/LUFFY aggregate with Σ m ℓ / L_max per micro-batch, divided by their gradient-accumulation steps K:
    ``agg = "token-sum-norm"`` (with ``max_len = K · L_max`` for their exact scale); the default here is
    ``token-mean``, like ``ppo_clip``.

    Off-policy tokens (``offpolicy`` with ``offpolicy_gamma`` set) take LUFFY's ``−Â·p/(p+γ)``.
    Metrics: ``ratio_mean`` (mean ρ over on-policy tokens), ``kl`` (when on), ``entropy`` (when given).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """PG parameters.

        Attributes:
            form: ``ratio`` (−Â·ρ, LUFFY/HPT) or ``logp`` (−Â·log π, REINFORCE).
            log_ratio_clamp: |log ρ| is clamped to this before exp (verl 20).
            kl_coef: weight of the KL penalty to the reference (0 = off).
            kl_estimator: ``k1``, ``k2``, ``k3`` (Schulman's estimators; GRPO and TRL 1.16 use k3), or ``k1+``/``k3+``:
                k1's/k3's value with k2's gradient (verl 0.9.1 ``kl_loss_type = "k3+"``).
            kl_importance: ``none``: ``kl_coef · k`` (verl 0.9.1 ``use_kl_loss``; TRL 1.16 with
                ``use_bias_correction_kl=False``); ``ratio``: ``kl_coef · ρ · k`` with the importance ratio ρ and its
                gradient (TRL 1.16's default ``use_bias_correction_kl=True``).
            entropy_coef: weight of the entropy bonus (0 = off; HPT and LUFFY use 0.001).
            agg: aggregation mode of :meth:`token_weights` (``lmix_core.ops.aggregation``; verl 0.9.1 ``loss_agg_mode``).
            agg_rows: R of the ``seq-mean-*`` modes: ``nonempty`` (B', verl 0.9.1's ``agg_loss``) or ``all`` (B: TRL
                1.16's ``grpo`` and ``dr_grpo``, verl 0.9.1's trainer); they differ only on rows with no loss token.
        """

        form: Literal["ratio", "logp"] = attrs.field(
            default="ratio", validator=attrs.validators.in_(("ratio", "logp"))
        )
        log_ratio_clamp: float = attrs.field(default=20.0, validator=attrs.validators.gt(0.0))
        kl_coef: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
        kl_estimator: KLEstimator = attrs.field(default="k3", validator=attrs.validators.in_(KL_ESTIMATORS))
        kl_importance: KLImportance = attrs.field(
            default="none", validator=attrs.validators.in_(KL_IMPORTANCE)
        )
        entropy_coef: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
        agg: AggMode = attrs.field(default="token-mean", validator=attrs.validators.in_(AGG_MODES))
        agg_rows: AggRows = attrs.field(default="nonempty", validator=attrs.validators.in_(AGG_ROWS))

    config: Config

    @property
    def needs_ref_logp(self) -> bool:
        return self.config.kl_coef > 0

    @property
    def needs_entropy(self) -> bool:
        return self.config.entropy_coef > 0

    def token_weights(self, mask: Tensor, /, *, max_len: int, counts: StepCounts | None = None) -> Tensor:
        cfg = self.config
        return aggregation_weights(mask, cfg.agg, max_len, counts, rows=cfg.agg_rows)  # [N, S]

    def __call__(self, inputs: LossInputs, /) -> LossOutput:
        cfg = self.config
        x = prepare(inputs, owner="pg", needs=self)
        ratio = token_ratio(x, log_ratio_clamp=cfg.log_ratio_clamp)  # [N, S]
        pg = -x.advantages * (ratio if cfg.form == "ratio" else x.logp)  # [N, S]
        metrics = {"ratio_mean": masked_mean(ratio.detach(), x.onpolicy)}
        return finish(PolicyTerm(loss=pg, metrics=metrics, ratio=ratio), x, cfg)
