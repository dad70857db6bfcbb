"""The ``policy`` combiner is the identity: no reference, no prefixes, every response token weighted 1."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core import registries
from lmix_core.combiners.policy import Policy
from lmix_core.errors import BackendError
from lmix_core.testing.combiner import check_combiner, layout


def test_registered_under_its_name():
    """``policy`` resolves to :class:`Policy` through the entry-point registry."""
    assert registries.combiners.get("policy") is Policy


def test_declarations():
    """No references, no entropy, deployed as the policy itself."""
    policy = Policy.default()
    assert policy.num_references == 0
    assert policy.needs_entropy is False
    assert policy.deploy == "policy"


@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 100))
def test_mix_is_the_policy_logits(rows, vocab, step):
    """``mix_logits`` returns the very policy tensor, at every step."""
    z = torch.randn(rows, vocab)
    assert Policy.default().mix_logits(z, [], step=step) is z


def test_references_are_rejected():
    """Passing reference logits is a backend error (the backend loaded a reference it should not have)."""
    with pytest.raises(BackendError, match="takes no reference logits"):
        Policy.default().mix_logits(torch.zeros(2, 3), [torch.zeros(2, 3)])


@given(st.lists(st.integers(0, 40), min_size=0, max_size=6), st.integers(1, 8), st.integers(0, 10**6))
def test_plan_prefixes_nothing(lengths, group, step):
    """Every rollout is ordinary: the plan is all zeros of shape [Q, G]."""
    plan = Policy.default().plan_rollouts(
        step=step,
        demo_lengths=torch.tensor(lengths, dtype=torch.long),
        group_size=group,
        generator=torch.Generator(),
    )
    assert plan.shape == (len(lengths), group) and plan.dtype == torch.long
    assert not bool(plan.any())


def test_loss_masks_are_the_response_mask():
    """Token weights are the response mask as floats; forced tokens are still marked off-policy."""
    mask, prefix = layout([1, 2], [3, 2], [1, 0], 6)
    out = Policy.default().loss_masks(mask=mask, prefix_mask=prefix, entropy=None)
    torch.testing.assert_close(out.token_weight, mask.float(), atol=0.0, rtol=0.0)
    assert torch.equal(out.offpolicy, prefix) and out.offpolicy_gamma is None


def test_passes_the_combiner_contract():
    """The default ``policy`` satisfies ``check_combiner``."""
    check_combiner(Policy.default())
