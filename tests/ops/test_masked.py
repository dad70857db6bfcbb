"""Masked reductions and whitening, and per-group reward statistics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.errors import LmixError
from lmix_core.ops.groups import grouped
from lmix_core.ops.masked import masked_mean, masked_var, masked_whiten
from lmix_core.types import AdvantageInputs


def test_masked_stats_by_hand():
    """values [1, 2, 3, 100] with the last masked: mean 2, unbiased var 1, whitened (−1, 0, 1, 0)/sqrt(1 + 1e-8)."""
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    m = torch.tensor([True, True, True, False])
    assert float(masked_mean(x, m)) == 2.0
    assert float(masked_var(x, m)) == 1.0
    assert abs(float(masked_var(x, m, unbiased=False)) - 2 / 3) < 1e-7
    torch.testing.assert_close(masked_whiten(x, m), torch.tensor([-1.0, 0.0, 1.0, 0.0]), rtol=0, atol=1e-6)


def test_empty_selection_is_zero():
    """Nothing selected: mean, variance and whitened values are 0, not NaN; NaN outside the mask is ignored."""
    x = torch.tensor([float("nan"), 5.0])
    none = torch.tensor([False, False])
    assert float(masked_mean(x, none)) == 0 and float(masked_var(x, none)) == 0
    assert masked_whiten(x, none).eq(0).all()
    assert float(masked_mean(x, torch.tensor([False, True]))) == 5.0


@given(st.lists(st.floats(-5, 5), min_size=2, max_size=12))
def test_group_stats_match_torch(values):
    """Group mean and unbiased variance equal torch's over each group's rows."""
    n = len(values)
    ids = torch.arange(n) % 3
    g = grouped(
        AdvantageInputs(rewards=torch.tensor(values), group_ids=ids, mask=torch.ones(n, 1, dtype=torch.bool)),
        owner="t",
    )
    r = torch.tensor(values, dtype=torch.float32).double()
    for k in range(min(3, n)):
        sel = r[ids == k]
        assert abs(float(g.group_mean(g.rewards)[k]) - float(sel.mean())) < 1e-9
        if sel.numel() >= 2:
            assert abs(float(g.group_var(g.rewards, unbiased=True)[k]) - float(sel.var())) < 1e-9


def test_grouped_rejects_bad_shapes():
    """Mismatched shapes and float group ids raise LmixError naming the estimator."""
    mask = torch.ones(3, 2, dtype=torch.bool)
    with pytest.raises(LmixError, match="est: 'group_ids'"):
        grouped(
            AdvantageInputs(rewards=torch.zeros(3), group_ids=torch.zeros(2, dtype=torch.long), mask=mask),
            owner="est",
        )
    with pytest.raises(LmixError, match="integer"):
        grouped(AdvantageInputs(rewards=torch.zeros(3), group_ids=torch.zeros(3), mask=mask), owner="est")
    with pytest.raises(LmixError, match="'mask'"):
        grouped(
            AdvantageInputs(
                rewards=torch.zeros(3), group_ids=torch.zeros(3, dtype=torch.long), mask=mask[:2]
            ),
            owner="est",
        )
