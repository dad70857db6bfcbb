"""Builders and Hypothesis strategies shared by the advantage-estimator tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from lmix_core.types import AdvantageInputs


def make_inputs(
    rewards: list[float],
    group_ids: list[int],
    lengths: list[int] | None = None,
    *,
    seq_len: int | None = None,
) -> AdvantageInputs:
    """AdvantageInputs with right-padded masks of the given response lengths (default 3 tokens each)."""
    n = len(rewards)
    lengths = lengths if lengths is not None else [3] * n
    s = seq_len if seq_len is not None else max([1, *lengths])
    mask = torch.arange(s)[None, :] < torch.tensor(lengths)[:, None]  # [N, S]
    return AdvantageInputs(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_ids=torch.tensor(group_ids, dtype=torch.long),
        mask=mask,
    )


def row_values(adv: torch.Tensor, inputs: AdvantageInputs) -> torch.Tensor:
    """The per-row value of a sequence-level advantage (its mean over the row's tokens; 0 for empty rows)."""
    m = inputs.mask.to(torch.float64)  # [N, S]
    return (adv.to(torch.float64) * m).sum(-1) / m.sum(-1).clamp(min=1)  # [N]


GRID = [i / 8 for i in range(9)]


@st.composite
def batches(
    draw,
    *,
    min_group: int = 1,
    max_group: int = 6,
    max_groups: int = 4,
    grid: bool = False,
    nan: bool = False,
    min_len: int = 0,
    max_len: int = 5,
) -> AdvantageInputs:
    """Random groups (sizes in [min_group, max_group]), rewards in [0, 1] (on a 1/8 grid when ``grid``), optional
    NaN rewards, random response lengths, rows shuffled and group ids sparse."""
    sizes = draw(st.lists(st.integers(min_group, max_group), min_size=1, max_size=max_groups))
    n = sum(sizes)
    value = st.sampled_from(GRID) if grid else st.floats(0.0, 1.0, width=32)
    if nan:
        value = st.one_of(value, st.just(float("nan")))
    rewards = draw(st.lists(value, min_size=n, max_size=n))
    ids = draw(st.lists(st.integers(-50, 50), min_size=len(sizes), max_size=len(sizes), unique=True))
    group_ids = [gid for gid, size in zip(ids, sizes) for _ in range(size)]
    lengths = draw(st.lists(st.integers(min_len, max_len), min_size=n, max_size=n))
    perm = draw(st.permutations(range(n)))
    return make_inputs(
        [rewards[i] for i in perm], [group_ids[i] for i in perm], [lengths[i] for i in perm], seq_len=max_len
    )


def groups_of(inputs: AdvantageInputs) -> dict[int, list[int]]:
    """Row indices of each group id, in row order."""
    out: dict[int, list[int]] = {}
    for i, gid in enumerate(inputs.group_ids.tolist()):
        out.setdefault(gid, []).append(i)
    return out


def with_rewards(inputs: AdvantageInputs, rewards: torch.Tensor | list[float]) -> AdvantageInputs:
    """The same batch with other rewards."""
    return AdvantageInputs(
        rewards=torch.as_tensor(rewards, dtype=torch.float32), group_ids=inputs.group_ids, mask=inputs.mask
    )
