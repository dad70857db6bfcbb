"""Every registered advantage estimator passes ``lmix_core.testing.advantage``; the suite catches broken ones."""

from __future__ import annotations

from typing import final

import attrs
import pytest
import torch
from torch import Tensor

from lmix_core.interfaces.advantage import AdvantageEstimator
from lmix_core.registries import advantages
from lmix_core.testing.advantage import check_advantage_estimator, parametrize_with_checks
from lmix_core.types import AdvantageInputs

from .helpers import defaults, variants

#: Non-default configurations of the built-ins that change code paths.
VARIANTS = [
    ("grpo", {"scale": "batch"}),
    ("grpo", {"scale": "none", "singleton": "zero"}),
    ("grpo", {"std": "population", "eps": 0.0}),
    ("grpo", {"eps": 1e-4}),
    ("rloo", {"singleton": "raw"}),
    ("dr_grpo", {"singleton": "zero"}),
    ("opo", {"singleton": "zero"}),
    ("reinforce_pp", {"baseline": "group"}),
    ("reinforce_pp", {"gamma": 0.9}),
    ("reinforce_pp", {"baseline": "group", "gamma": 0.0, "singleton": "zero"}),
    ("bnpo", {"singleton": "raw"}),
    ("bnpo", {"reward_min": -1.0, "reward_max": 2.0}),
]


@parametrize_with_checks(defaults(advantages))
def test_registered_estimator_passes(estimator, check):
    """Each registered name, with its default Config, passes each contract check."""
    check(estimator)


@parametrize_with_checks(variants(advantages, VARIANTS))
def test_builtin_variants_pass(estimator, check):
    """Non-default configurations of the built-ins pass each contract check."""
    check(estimator)


def _centred(inputs: AdvantageInputs) -> Tensor:
    r = torch.nan_to_num(inputs.rewards)
    return (r - r.mean())[:, None] * inputs.mask  # [N, S]


@final
class LeaksPadding(AdvantageEstimator):
    @attrs.frozen
    class Config:
        pass

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        return torch.nan_to_num(inputs.rewards)[:, None].expand(inputs.mask.shape).clone()


@final
class MutatesRewards(AdvantageEstimator):
    @attrs.frozen
    class Config:
        pass

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        inputs.rewards.nan_to_num_(0.0)
        return _centred(inputs)


@final
class DependsOnRowOrder(AdvantageEstimator):
    @attrs.frozen
    class Config:
        pass

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        order = torch.arange(inputs.mask.shape[0], dtype=torch.float32)
        return order[:, None] * inputs.mask


@final
class ClaimsScaleInvariance(AdvantageEstimator):
    invariances = frozenset({"scale"})

    @attrs.frozen
    class Config:
        pass

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        return _centred(inputs)


@final
class NaNLeaks(AdvantageEstimator):
    @attrs.frozen
    class Config:
        pass

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        r = inputs.rewards
        return torch.where(inputs.mask, (r - r.mean())[:, None], torch.zeros(()))


@final
class BatchMeanBaseline(AdvantageEstimator):
    """r − mean of the batch's rewards: local to each rank unless ``global_mean`` reduces it with ``all_sum``."""

    @attrs.frozen
    class Config:
        global_mean: bool = False

    def __call__(self, inputs: AdvantageInputs, /) -> Tensor:
        r = torch.nan_to_num(inputs.rewards).to(torch.float64)  # [N]
        stats = torch.stack([r.sum(), torch.tensor(float(r.numel()), dtype=torch.float64)])  # [2]
        if self.config.global_mean:
            stats = inputs.all_sum(stats)  # [2]
        mean = stats[0] / stats[1].clamp(min=1)  # []
        return ((r - mean)[:, None] * inputs.mask).float()  # [N, S]


def test_batch_statistics_reduced_over_ranks_pass():
    """The same batch baseline passes once its sums go through all_sum."""
    check_advantage_estimator(BatchMeanBaseline(BatchMeanBaseline.Config(global_mean=True)))


@pytest.mark.parametrize(
    ("broken", "what"),
    [
        (LeaksPadding, "zero outside mask"),
        (MutatesRewards, "pure"),
        (DependsOnRowOrder, "permutation"),
        (ClaimsScaleInvariance, "scale"),
        (NaNLeaks, "finite"),
        (BatchMeanBaseline, "data-parallel split"),
    ],
)
def test_suite_catches_broken_estimators(broken, what):
    """The suite fails, naming the check, for estimators that break the contract."""
    with pytest.raises(AssertionError, match=what):
        check_advantage_estimator(broken.default())
