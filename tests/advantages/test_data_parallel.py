"""Batch-level advantage statistics span every data-parallel rank: the step's groups split over two ranks, with a
real ``all_sum`` between them, give exactly the advantages of the whole batch in one process."""

from __future__ import annotations

import pytest
import torch

from lmix_core.registries import advantages
from lmix_core.testing.advantage import InProcessRanks
from lmix_core.types import AdvantageInputs, one_process_sum

from .helpers import make_inputs

#: Estimators whose statistics span the batch (not one group).
BATCH_LEVEL = [
    ("grpo", {"scale": "batch"}),
    ("reinforce_pp", {}),
    ("reinforce_pp", {"baseline": "group", "gamma": 0.9}),
    ("bnpo", {}),
]

# 6 questions of 4 rollouts, uneven lengths; rank 0 holds the first 2 questions, rank 1 the other 4 (ranks hold
# whole groups, as the loop splits them). Rewards with a NaN, and per-question means of 0.25 .. 1.
REWARDS = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0.5, 0, 1, float("nan"), 1, 1, 1, 1, 0, 0.75, 0.5, 0.25]
GROUPS = [q for q in range(6) for _ in range(4)]
LENGTHS = [3, 5, 2, 7, 4, 4, 1, 6, 2, 2, 3, 8, 5, 5, 5, 1, 7, 3, 2, 4, 6, 1, 3, 2]


def _build(name: str, params: dict):
    cls = advantages.get(name)
    return cls(cls.Config(**params))


def _split(inputs: AdvantageInputs, rows: list[torch.Tensor], all_sums) -> list[AdvantageInputs]:
    return [
        AdvantageInputs(
            rewards=inputs.rewards[r], group_ids=inputs.group_ids[r], mask=inputs.mask[r], all_sum=all_sums[k]
        )
        for k, r in enumerate(rows)
    ]


@pytest.mark.parametrize(("name", "params"), BATCH_LEVEL, ids=[f"{n}-{p}" for n, p in BATCH_LEVEL])
def test_two_ranks_give_the_whole_batch_advantages(name, params):
    est = _build(name, params)
    inputs = make_inputs(REWARDS, GROUPS, LENGTHS)
    whole = est(inputs)  # [N, S]
    rows = [inputs.group_ids < 2, inputs.group_ids >= 2]
    ranks = InProcessRanks(2)
    shares = _split(inputs, rows, [ranks.all_sum(0), ranks.all_sum(1)])
    parts = ranks.run(lambda rank: est(shares[rank]))
    split = torch.zeros_like(whole)
    for part, r in zip(parts, rows):
        split[r] = part
    assert torch.equal(split, whole), (split - whole).abs().max()
    # the same split with per-rank statistics (what each rank computed before): visibly different
    alone = [est(share) for share in _split(inputs, rows, [one_process_sum, one_process_sum])]
    assert max(float((a - whole[r]).abs().max()) for a, r in zip(alone, rows)) > 0.05


def test_group_level_estimators_need_no_reduction():
    """GRPO with the group std makes no all_sum call: each rank holds whole groups."""
    calls = []

    def counting(values: torch.Tensor) -> torch.Tensor:
        calls.append(values)
        return values

    inputs = make_inputs(REWARDS, GROUPS, LENGTHS)
    est = _build("grpo", {})
    out = est(
        AdvantageInputs(
            rewards=inputs.rewards, group_ids=inputs.group_ids, mask=inputs.mask, all_sum=counting
        )
    )
    assert calls == [] and torch.equal(out, est(inputs))
