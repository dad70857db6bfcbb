"""Every registered policy loss passes ``lmix_core.testing.loss``; the suite catches broken ones."""

from __future__ import annotations

from typing import final

import attrs
import pytest
import torch
from torch import Tensor

from lmix_core.interfaces.loss import PolicyLoss
from lmix_core.ops.aggregation import StepCounts, aggregation_weights
from lmix_core.registries import losses
from lmix_core.testing.loss import check_loss, parametrize_with_checks
from lmix_core.types import LossInputs, LossOutput

from .helpers import defaults, variants

#: Non-default configurations of the built-ins that change code paths.
VARIANTS = [
    ("ppo_clip", {"dual_clip": 3.0, "eps_high": 0.28}),
    ("ppo_clip", {"kl_coef": 0.1, "kl_estimator": "k1", "entropy_coef": 0.01}),
    ("ppo_clip", {"kl_coef": 0.04, "kl_estimator": "k2", "agg": "seq-mean-token-sum"}),
    ("ppo_clip", {"eps_low": 0.0, "eps_high": 0.0, "agg": "seq-mean-token-mean"}),
    ("gspo", {"kl_coef": 0.04, "agg": "seq-mean-token-sum-norm"}),
    ("gspo", {"eps_low": 0.2, "eps_high": 0.2, "agg": "token-mean"}),
    ("pg", {"form": "logp", "agg": "seq-mean-token-sum-norm"}),
    ("pg", {"entropy_coef": 0.001}),
    ("pg", {"agg": "token-sum-norm", "kl_coef": 0.1, "kl_estimator": "k1+", "kl_importance": "ratio"}),
    (
        "ppo_clip",
        {"kl_coef": 0.04, "kl_importance": "ratio", "agg": "seq-mean-token-mean", "agg_rows": "all"},
    ),
    ("ppo_clip", {"kl_coef": 0.04, "kl_estimator": "k3+", "dual_clip": 3.0, "agg": "token-sum"}),
    ("gspo", {"kl_coef": 0.04, "kl_importance": "ratio", "agg_rows": "all"}),
    ("gspo", {"agg": "seq-mean-token-sum-norm", "agg_rows": "all"}),
]


@parametrize_with_checks(defaults(losses))
def test_registered_loss_passes(loss, check):
    """Each registered name, with its default Config, passes each contract check."""
    check(loss)


@parametrize_with_checks(variants(losses, VARIANTS))
def test_builtin_variants_pass(loss, check):
    """Non-default configurations of the built-ins pass each contract check."""
    check(loss)


class _Base(PolicyLoss):
    @attrs.frozen
    class Config:
        pass

    def token_weights(self, mask: Tensor, /, *, max_len: int, counts: StepCounts | None = None) -> Tensor:
        return aggregation_weights(mask, "token-mean", max_len, counts)


@final
class MicroBatchMean(_Base):
    """Normalises by the micro-batch's own token count instead of using token_weights."""

    def __call__(self, inputs: LossInputs, /) -> LossOutput:
        m = inputs.mask
        ratio = torch.exp(torch.where(m, inputs.logp - inputs.old_logp, 0.0))
        per_token = torch.where(m, -inputs.advantages * ratio, 0.0)
        return LossOutput(loss=per_token.sum() / m.sum().clamp(min=1))


@final
class NoMasking(_Base):
    """Multiplies garbage by zero weights (0 · inf = NaN) instead of masking first."""

    def __call__(self, inputs: LossInputs, /) -> LossOutput:
        ratio = torch.exp(inputs.logp - inputs.old_logp)
        return LossOutput(loss=(-inputs.advantages * ratio * inputs.token_weights).sum())


@final
class IgnoresOffpolicy(_Base):
    """Treats forced tokens like sampled ones even when γ is set."""

    def __call__(self, inputs: LossInputs, /) -> LossOutput:
        m = inputs.mask
        ratio = torch.exp(torch.where(m, inputs.logp - inputs.old_logp, 0.0))
        return LossOutput(loss=torch.where(m, -inputs.advantages * ratio * inputs.token_weights, 0.0).sum())


@final
class IgnoresCounts(PolicyLoss):
    """Normalises by its own rank's tokens even when given the step's global counts."""

    @attrs.frozen
    class Config:
        pass

    def token_weights(self, mask: Tensor, /, *, max_len: int, counts: StepCounts | None = None) -> Tensor:
        return aggregation_weights(mask, "token-mean", max_len)

    def __call__(self, inputs: LossInputs, /) -> LossOutput:
        m = inputs.mask
        ratio = torch.exp(torch.where(m, inputs.logp - inputs.old_logp, 0.0))
        return LossOutput(loss=torch.where(m, -inputs.advantages * ratio * inputs.token_weights, 0.0).sum())


@pytest.mark.parametrize(
    ("broken", "what"),
    [
        (MicroBatchMean, "linear"),
        (NoMasking, "masked tokens"),
        (IgnoresOffpolicy, "offpolicy"),
        (IgnoresCounts, "step counts"),
    ],
)
def test_suite_catches_broken_losses(broken, what):
    """The suite fails, naming the check, for losses that break the contract."""
    with pytest.raises(AssertionError, match=what):
        check_loss(broken.default())
