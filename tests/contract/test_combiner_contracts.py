"""Every registered combiner (built-in or plugin) passes ``check_combiner``; the suite catches broken ones."""

from __future__ import annotations

from typing import final

import attrs
import pytest
import torch

from lmix_core import registries
from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.combiners.prefix import Prefix
from lmix_core.combiners.weighted import Weighted
from lmix_core.interfaces.combiner import LossMasks, PolicyCombiner
from lmix_core.testing.combiner import COMBINER_CHECKS, check_combiner, parametrize_with_checks

from .helpers import defaults


@parametrize_with_checks(defaults(registries.combiners))
def test_registered_combiner_passes_contract_with_defaults(combiner, check):
    """The registered combiner, built with its default Config, satisfies each check of the combiner contract."""
    check(combiner)


@parametrize_with_checks(
    [
        LogitAverage(LogitAverage.Config(alpha=0.0)),
        Weighted(Weighted.Config(ref_weights=(0.3, 0.7), schedule="linear", schedule_steps=5, alpha_end=1.0)),
        Prefix(Prefix.Config(length="uniform", num_prefixed=4, entropy_scope="sequence")),
    ]
)
def test_non_default_builtins_pass_each_check(combiner, check):
    """Non-default built-in settings pass each check (one test per check, via ``parametrize_with_checks``)."""
    check(combiner)


def test_parametrize_helper_covers_every_check():
    """``parametrize_with_checks`` yields one case per (combiner, check)."""
    mark = parametrize_with_checks([LogitAverage.default(), Prefix.default()])
    assert len(mark.args[1]) == 2 * len(COMBINER_CHECKS)


# -- broken combiners: each violates one clause of the contract ----------------------------------------------------
class _Base(PolicyCombiner):
    @attrs.frozen(kw_only=True)
    class Config:
        pass

    @property
    def num_references(self) -> int:
        return 1

    def mix_logits(self, z_policy, z_refs, *, step=0):
        return 0.5 * z_policy + 0.5 * z_refs[0].detach()


@final
class LeaksGradient(_Base):
    def mix_logits(self, z_policy, z_refs, *, step=0):
        return 0.5 * z_policy + 0.5 * z_refs[0]  # no stop-gradient on the reference


@final
class ChangesDtype(_Base):
    def mix_logits(self, z_policy, z_refs, *, step=0):
        return (0.5 * z_policy + 0.5 * z_refs[0].detach()).double()


@final
class MixesRows(_Base):
    def mix_logits(self, z_policy, z_refs, *, step=0):
        return z_policy + z_policy.mean(dim=0, keepdim=True) * z_refs[0].detach()  # uses other rows


@final
class NotShiftInvariant(_Base):
    def mix_logits(self, z_policy, z_refs, *, step=0):
        return z_policy * torch.sigmoid(
            z_refs[0].detach().mean(-1, keepdim=True)
        )  # scale depends on the level


@final
class Overflows(_Base):
    def mix_logits(self, z_policy, z_refs, *, step=0):
        return torch.exp(z_policy) + z_refs[0].detach()


@final
class InPlace(_Base):
    def mix_logits(self, z_policy, z_refs, *, step=0):
        return z_refs[0].mul_(0.5)


@final
class LongPrefixes(_Base):
    def plan_rollouts(self, *, step, demo_lengths, group_size, generator):
        return (demo_lengths[:, None] + 1).expand(-1, group_size).clone()  # one past the demonstration


@final
class RandomPlan(_Base):
    def plan_rollouts(self, *, step, demo_lengths, group_size, generator):
        return torch.randint(0, 2, (demo_lengths.shape[0], group_size)) * (demo_lengths[:, None] > 0)


@final
class WeightsPadding(_Base):
    def loss_masks(self, *, mask, prefix_mask, entropy, step=0):
        return LossMasks(token_weight=torch.ones(mask.shape), offpolicy=prefix_mask & mask)


@final
class BadDeploy(_Base):
    @property
    def deploy(self) -> str:
        return "teacher"


@pytest.mark.parametrize(
    ("broken", "match"),
    [
        (LeaksGradient, "a gradient reached z_refs"),
        (ChangesDtype, "shape/dtype"),
        (MixesRows, "row-wise"),
        (NotShiftInvariant, "shift invariance"),
        (Overflows, "finite"),
        (InPlace, "purity"),
        (LongPrefixes, "plan_rollouts"),
        (RandomPlan, "not reproducible"),
        (WeightsPadding, "non-zero outside the response mask"),
        (BadDeploy, "deploy must be"),
    ],
)
def test_contract_catches_broken_combiners(broken, match):
    """Each deliberately broken combiner fails ``check_combiner`` with a message naming the broken clause."""
    with pytest.raises(AssertionError, match=match):
        check_combiner(broken.default())


def test_a_correct_base_passes():
    """The broken combiners' common base is itself correct (so each failure is its own clause)."""
    check_combiner(_Base.default())


def test_non_combiners_are_rejected():
    """``check_combiner`` refuses objects that are not PolicyCombiners."""
    with pytest.raises(AssertionError, match="is not a PolicyCombiner"):
        check_combiner(object())
