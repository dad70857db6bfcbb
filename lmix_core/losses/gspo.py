"""GSPO: group sequence policy optimisation (Zheng et al., arXiv 2507.18071)."""

from __future__ import annotations

from typing import final

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.loss import PolicyLoss
from lmix_core.ops.aggregation import AGG_MODES, AGG_ROWS, AggMode, AggRows, StepCounts, aggregation_weights
from lmix_core.ops.kl import KL_ESTIMATORS, KL_IMPORTANCE, KLEstimator, KLImportance
from lmix_core.ops.loss_terms import clipped_term, finish, prepare
from lmix_core.types import LossInputs, LossOutput


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    r"""``log s_i = (1/|y_i|) Σ_t m_{i,t} (log π_θ − log π_old)``: the log of the geometric mean of the token
    ratios, 0 for an empty row.

    Args:
        logp: ``[N, S]``.
        old_logp: ``[N, S]``.
        mask: ``[N, S]`` bool tokens of the sequence ratio.

    Returns:
        ``[N, 1]``.
    """
    m = mask.to(logp.dtype)  # [N, S]
    lengths = m.sum(-1, keepdim=True).clamp(min=1.0)  # [N, 1]
    return ((logp - old_logp) * m).sum(-1, keepdim=True) / lengths  # [N, 1]


@final
class GSPO(PolicyLoss):
    r"""Sequence-level importance ratio, clipped per sequence (GSPO-token form, verl ``compute_policy_loss_gspo``):

        s_i     = (π_θ(y_i|x) / π_old(y_i|x))^{1/|y_i|} = exp(mean_t log ρ_{i,t})
        log s_{i,t} = min(log π_θ(y_{i,t}) − sg[log π_θ(y_{i,t})] + sg[log s_i], log_ratio_max)
        ℓ_pg    = max(−Â_{i,t}·s_{i,t}, −Â_{i,t}·clip(s_{i,t}, 1 − ε_low, 1 + ε_high))
        ℓ       = ℓ_pg + kl_coef · KL_k − entropy_coef · H,     loss = Σ w · ℓ

    s_{i,t} has the value s_i and the gradient s_i·∇log π_θ(y_{i,t}); with a sequence-level Â and the default
    ``seq-mean-token-mean`` aggregation (the only mode verl allows) the loss and its gradient equal GSPO's
    ``(1/G) Σ_i max(−Â_i s_i, −Â_i clip(s_i))``. TRL: ``importance_sampling_level="sequence"``. The paper's
    ε = (3e-4, 4e-4) are the defaults; the log ratio is clamped at 10 as verl does.

    With single-token responses GSPO is the token-level PPO clip; a uniform token ratio c gives s_i = c.
    Off-policy tokens (``offpolicy`` with ``offpolicy_gamma`` set) take LUFFY's ``−Â·p/(p+γ)`` and are left out
    of s_i (the sequence ratio is the geometric mean over the row's on-policy tokens).

    Metrics: ``clip_frac`` (tokens whose sequence is clipped), ``ratio_mean`` (mean s over on-policy tokens),
    ``kl`` (when on), ``entropy`` (when given).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """GSPO parameters.

        Attributes:
            eps_low: ε_low of the sequence clip (paper 3e-4).
            eps_high: ε_high of the sequence clip (paper 4e-4).
            log_ratio_max: upper clamp of log s_{i,t} (verl 10).
            kl_coef: weight of the KL penalty to the reference (0 = off).
            kl_estimator: ``k1``, ``k2``, ``k3`` (Schulman's estimators; GRPO and TRL 1.16 use k3), or ``k1+``/``k3+``:
                k1's/k3's value with k2's gradient (verl 0.9.1 ``kl_loss_type = "k3+"``).
            kl_importance: ``none``: ``kl_coef · k`` (verl 0.9.1 ``use_kl_loss``; TRL 1.16 with
                ``use_bias_correction_kl=False``); ``ratio``: ``kl_coef · ρ · k`` with the importance ratio ρ and its
                gradient (TRL 1.16's default ``use_bias_correction_kl=True``).
            entropy_coef: weight of the entropy bonus (0 = off).
            agg: aggregation mode of :meth:`token_weights` (``lmix_core.ops.aggregation``; verl 0.9.1 ``loss_agg_mode``) (GSPO is defined with ``seq-mean-token-mean``).
            agg_rows: R of the ``seq-mean-*`` modes: ``nonempty`` (B', verl 0.9.1's ``agg_loss``) or ``all`` (B: TRL
                1.16's ``grpo`` and ``dr_grpo``, verl 0.9.1's trainer); they differ only on rows with no loss token.
        """

        eps_low: float = attrs.field(
            default=3e-4, validator=[attrs.validators.ge(0.0), attrs.validators.lt(1.0)]
        )
        eps_high: float = attrs.field(default=4e-4, validator=attrs.validators.ge(0.0))
        log_ratio_max: float = attrs.field(default=10.0, validator=attrs.validators.gt(0.0))
        kl_coef: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
        kl_estimator: KLEstimator = attrs.field(default="k3", validator=attrs.validators.in_(KL_ESTIMATORS))
        kl_importance: KLImportance = attrs.field(
            default="none", validator=attrs.validators.in_(KL_IMPORTANCE)
        )
        entropy_coef: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
        agg: AggMode = attrs.field(default="seq-mean-token-mean", validator=attrs.validators.in_(AGG_MODES))
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
        x = prepare(inputs, owner="gspo", needs=self)
        log_s = sequence_log_ratio(x.logp.detach(), x.old_logp, x.onpolicy)  # [N, 1]
        log_st = (x.logp - x.logp.detach() + log_s).clamp(max=cfg.log_ratio_max)  # [N, S]
        ratio = torch.exp(log_st)  # [N, S]
        term = clipped_term(x, ratio, eps_low=cfg.eps_low, eps_high=cfg.eps_high)
        # The KL's importance weight (kl_importance = "ratio") is s_i with its gradient through every token, as TRL.
        log_s_grad = sequence_log_ratio(x.logp, x.old_logp, x.onpolicy).clamp(max=cfg.log_ratio_max)  # [N, 1]
        return finish(attrs.evolve(term, ratio=torch.exp(log_s_grad)), x, cfg)
