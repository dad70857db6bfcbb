"""PPO's clipped surrogate, as GRPO and DAPO use it (Schulman et al., arXiv 1707.06347; DeepSeekMath
arXiv 2402.03300; DAPO arXiv 2503.14476; dual clip: Ye et al., arXiv 1912.09729)."""

from __future__ import annotations

from typing import final

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.loss import PolicyLoss
from lmix_core.ops.aggregation import AGG_MODES, AGG_ROWS, AggMode, AggRows, StepCounts, aggregation_weights
from lmix_core.ops.kl import KL_ESTIMATORS, KL_IMPORTANCE, KLEstimator, KLImportance
from lmix_core.ops.loss_terms import PolicyTerm, clipped_term, finish, prepare, token_ratio
from lmix_core.ops.masked import masked_mean
from lmix_core.types import LossInputs, LossOutput


@final
class PPOClip(PolicyLoss):
    r"""Clipped importance-ratio surrogate per token, with clip-higher and optional dual clip:

        ρ      = exp(clamp(log π_θ − log π_old, −c_log, c_log))
        ℓ_clip = max(−Â·ρ, −Â·clip(ρ, 1 − ε_low, 1 + ε_high))
        ℓ_pg   = min(ℓ_clip, −Â·c)  if Â < 0 and dual_clip = c is set,  else ℓ_clip
        ℓ      = ℓ_pg + kl_coef · KL_k(π_θ ‖ π_ref) − entropy_coef · H
        loss   = Σ_{i,t} w_{i,t} · ℓ_{i,t}        (w from :meth:`token_weights`, times mixer/combiner weights)

    This is verl 0.9.1's ``compute_policy_loss_vanilla`` (log-ratio clamp ±20, ``clip_ratio_c = 3`` when dual clip
    is on; its ``use_kl_loss`` KL term is ``kl_importance = "none"``) and TRL 1.16's GRPO loss (``epsilon``,
    ``epsilon_high``; ``beta`` = ``kl_coef`` with k3; its default ``use_bias_correction_kl=True`` is
    ``kl_importance = "ratio"``; its ``loss_type`` is ``agg``: ``grpo`` = ``seq-mean-token-mean`` with
    ``agg_rows = "all"``, ``dapo`` = ``token-mean``, ``dr_grpo`` = ``seq-mean-token-sum-norm`` with ``agg_rows =
    "all"``). GRPO: ε = 0.2 and ``agg = "seq-mean-token-mean"``, KL k3 with β > 0; DAPO: ε_low = 0.2, ε_high =
    0.28, ``agg = "token-mean"``, no KL. With ε_low = ε_high the clip is the symmetric GRPO/PPO clip.

    Gradient regions: for Â > 0 the gradient is 0 once ρ > 1 + ε_high; for Â < 0 it is 0 once ρ < 1 − ε_low and,
    with dual clip, once ρ > c. At ρ = 1 (first inner step) ℓ_clip = −Â·ρ and ∇ℓ = −Â·∇log π.

    Off-policy tokens (``LossInputs.offpolicy`` with ``offpolicy_gamma`` set) take LUFFY's ``−Â·p/(p+γ)`` instead,
    unclipped. Default ``agg`` is ``token-mean`` (DAPO, and verl's and TRL's default), which does not favour short
    responses; set ``seq-mean-token-mean`` for the original GRPO objective.

    Metrics: ``clip_frac`` (tokens where the ε-clip is active), ``clip_frac_lower`` (dual clip active),
    ``ratio_mean`` (mean ρ), ``kl`` (when on), ``entropy`` (when given): token means over the micro-batch's
    ratio tokens (on-policy) or mask.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """PPO-clip parameters.

        Attributes:
            eps_low: ε_low, the lower clip 1 − ε_low (verl ``clip_ratio_low``, TRL ``epsilon``).
            eps_high: ε_high, the upper clip 1 + ε_high (DAPO's clip-higher uses 0.28).
            dual_clip: c of dual-clip PPO for Â < 0 (verl ``clip_ratio_c``, 3.0 there), or None for off.
            log_ratio_clamp: |log ρ| is clamped to this before exp (verl 20).
            kl_coef: weight of the KL penalty to the reference (0 = off, no reference needed).
            kl_estimator: ``k1``, ``k2``, ``k3`` (Schulman's estimators; GRPO and TRL 1.16 use k3), or ``k1+``/``k3+``:
                k1's/k3's value with k2's gradient (verl 0.9.1 ``kl_loss_type = "k3+"``).
            kl_importance: ``none``: ``kl_coef · k`` (verl 0.9.1 ``use_kl_loss``; TRL 1.16 with
                ``use_bias_correction_kl=False``); ``ratio``: ``kl_coef · ρ · k`` with the importance ratio ρ and its
                gradient (TRL 1.16's default ``use_bias_correction_kl=True``).
            entropy_coef: weight of the entropy bonus (0 = off).
            agg: aggregation mode of :meth:`token_weights` (``lmix_core.ops.aggregation``; verl 0.9.1 ``loss_agg_mode``).
            agg_rows: R of the ``seq-mean-*`` modes: ``nonempty`` (B', verl 0.9.1's ``agg_loss``) or ``all`` (B: TRL
                1.16's ``grpo`` and ``dr_grpo``, verl 0.9.1's trainer); they differ only on rows with no loss token.
        """

        eps_low: float = attrs.field(
            default=0.2, validator=[attrs.validators.ge(0.0), attrs.validators.lt(1.0)]
        )
        eps_high: float = attrs.field(default=0.2, validator=attrs.validators.ge(0.0))
        dual_clip: float | None = attrs.field(
            default=None, validator=attrs.validators.optional(attrs.validators.gt(1.0))
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
        x = prepare(inputs, owner="ppo_clip", needs=self)
        ratio = token_ratio(x, log_ratio_clamp=cfg.log_ratio_clamp)  # [N, S]
        term = clipped_term(x, ratio, eps_low=cfg.eps_low, eps_high=cfg.eps_high)
        if cfg.dual_clip is None:
            return finish(term, x, cfg)
        a = x.advantages  # [N, S]
        pg3 = -a * cfg.dual_clip  # [N, S]
        dual = (a < 0) & (term.loss > pg3)  # [N, S]
        pg = torch.where(a < 0, torch.minimum(term.loss, pg3), term.loss)  # [N, S]
        metrics = {**term.metrics, "clip_frac_lower": masked_mean(dual.float(), x.onpolicy)}
        return finish(PolicyTerm(loss=pg, metrics=metrics, ratio=ratio), x, cfg)
