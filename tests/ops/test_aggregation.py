"""Aggregation modes as per-token weights, against verl 0.9.1's ``agg_loss`` and TRL 1.16's GRPO loss types."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from lmix_core.errors import LmixError
from lmix_core.ops.aggregation import AGG_MODES, AGG_ROWS, StepCounts, aggregation_weights


@st.composite
def masks(draw, min_rows: int = 1, max_rows: int = 5, max_len: int = 6, min_tokens: int = 0):
    """[N, S] masks with a random prompt offset and random response length per row."""
    n = draw(st.integers(min_rows, max_rows))
    s = draw(st.integers(1, max_len))
    rows = []
    for _ in range(n):
        start = draw(st.integers(0, s - 1))
        length = draw(st.integers(min(min_tokens, s - start), s - start))
        rows.append([start <= t < start + length for t in range(s)])
    return torch.tensor(rows, dtype=torch.bool)


def agg(mask: torch.Tensor, loss: torch.Tensor, mode: str, max_len: int = 8, rows: str = "nonempty"):
    return (aggregation_weights(mask, mode, max_len, rows=rows) * loss).sum()  # type: ignore[arg-type]


def verl_agg_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int, rows: int | None = None):
    """verl 0.9.1's ``agg_loss`` written out (one process; ``rows`` = its ``global_batch_size``, default B')."""
    m = mask.float()
    lengths = m.sum(-1)
    r = float((lengths > 0).sum()) if rows is None else float(rows)
    if mode == "token-mean":
        return (loss * m).sum() / m.sum()
    if mode == "token-sum":
        return (loss * m).sum()
    if mode == "seq-mean-token-sum":
        return (loss * m).sum() / r
    if mode == "seq-mean-token-mean":
        return ((loss * m).sum(-1) / (lengths + 1e-8)).sum() / r
    if mode == "seq-mean-token-sum-norm":
        return (loss * m).sum() / r / max_len  # verl's loss_scale_factor = max_len
    return (loss * m).sum() / max_len  # token-sum-norm: verl before the 1/B', LUFFY/HPT


#: Rows of 3, 1 and 0 tokens (B' = 2, B = 3) with per-token losses 1, 2, 3 | 4 (9 = ignored), L = 8.
MASK = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0], [9.0, 4.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])

#: (mode, rows) -> the aggregate, by hand. The same numbers come out of verl 0.9.1's own ``agg_loss`` called on
#: these inputs (``loss_scale_factor=8``; ``global_batch_size=3`` for rows="all") and of TRL 1.16's
#: ``GRPOTrainer._compute_loss`` (one process, no accumulation) for the loss types named.
BY_HAND = {
    ("token-mean", "nonempty"): 10 / 4,  # (1+2+3+4)/4 = 2.5; verl token-mean; TRL dapo, bnpo
    ("token-sum", "nonempty"): 10.0,  # verl token-sum
    ("seq-mean-token-mean", "nonempty"): (6 / 3 + 4 / 1) / 2,  # 3.0; verl standalone
    ("seq-mean-token-mean", "all"): (6 / 3 + 4 / 1 + 0) / 3,  # 2.0; verl global_batch_size=3; TRL grpo
    ("seq-mean-token-sum", "nonempty"): (6 + 4) / 2,  # 5.0; verl standalone
    ("seq-mean-token-sum", "all"): (6 + 4) / 3,  # 3.3333333; verl global_batch_size=3; TRL luspo
    ("seq-mean-token-sum-norm", "nonempty"): 10 / (2 * 8),  # 0.625; verl standalone
    ("seq-mean-token-sum-norm", "all"): 10 / (3 * 8),  # 0.4166667; verl global_batch_size=3; TRL dr_grpo
    ("token-sum-norm", "nonempty"): 10 / 8,  # 1.25; LUFFY/HPT per micro-batch
}


@pytest.mark.parametrize(("mode", "rows"), list(BY_HAND))
def test_peer_values_by_hand(mode, rows):
    """Each mode's aggregate of a fixed batch with an empty row equals the value verl 0.9.1 and TRL 1.16 give."""
    w = aggregation_weights(MASK, mode, 8, rows=rows)
    torch.testing.assert_close((w * LOSS).sum(), torch.tensor(BY_HAND[mode, rows]), rtol=1e-6, atol=0)


def test_rows_choice_only_matters_with_empty_rows():
    """token-mean, token-sum and token-sum-norm ignore ``rows``; without empty rows every mode does."""
    for mode in ("token-mean", "token-sum", "token-sum-norm"):
        torch.testing.assert_close(
            aggregation_weights(MASK, mode, 8, rows="all"), aggregation_weights(MASK, mode, 8), rtol=0, atol=0
        )
    full = MASK[:2]
    for mode in AGG_MODES:
        torch.testing.assert_close(
            aggregation_weights(full, mode, 8, rows="all"), aggregation_weights(full, mode, 8), rtol=0, atol=0
        )


def test_weights_by_hand():
    """Rows of 3, 1 and 0 tokens: token-mean 1/4; seq-mean-token-mean 1/(3·2), 1/(1·2); seq-mean-token-sum 1/2;
    seq-mean-token-sum-norm 1/(2·8); token-sum-norm 1/8; token-sum 1."""
    m = MASK.float()
    torch.testing.assert_close(aggregation_weights(MASK, "token-mean", 8), m / 4, rtol=0, atol=0)
    expected = torch.tensor([[1 / 6] * 3 + [0], [0, 0.5, 0, 0], [0] * 4])
    torch.testing.assert_close(
        aggregation_weights(MASK, "seq-mean-token-mean", 8), expected, rtol=0, atol=1e-7
    )
    torch.testing.assert_close(aggregation_weights(MASK, "seq-mean-token-sum", 8), m / 2, rtol=0, atol=0)
    torch.testing.assert_close(
        aggregation_weights(MASK, "seq-mean-token-sum-norm", 8), m / 16, rtol=0, atol=0
    )
    torch.testing.assert_close(aggregation_weights(MASK, "token-sum-norm", 8), m / 8, rtol=0, atol=0)
    torch.testing.assert_close(aggregation_weights(MASK, "token-sum", 8), m, rtol=0, atol=0)


def test_empty_mask_gives_zero_weights():
    """No tokens: every mode gives all-zero (finite) weights."""
    for mode in AGG_MODES:
        for rows in AGG_ROWS:
            w = aggregation_weights(torch.zeros(2, 3, dtype=torch.bool), mode, 4, rows=rows)
            assert w.eq(0).all() and w.dtype == torch.float32


@given(masks(), st.sampled_from(AGG_MODES), st.integers(1, 20), st.sampled_from(AGG_ROWS))
def test_matches_verl_agg_loss(mask, mode, max_len, rows):
    """Σ w·ℓ equals verl 0.9.1's agg_loss (written out) for every mode, with B' or B rows."""
    loss = torch.randn(mask.shape, generator=torch.Generator().manual_seed(int(mask.sum())))
    assume(bool(mask.any()))
    r = None if rows == "nonempty" else mask.shape[0]
    torch.testing.assert_close(
        agg(mask, loss, mode, max_len, rows),
        verl_agg_loss(loss, mask, mode, max_len, r),
        rtol=1e-5,
        atol=1e-6,
    )


@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 3))
def test_equal_lengths_token_mean_is_seq_mean_token_mean(n, length, pad):
    """With equal lengths token-mean = seq-mean-token-mean, and seq-mean-token-sum = L × seq-mean-token-mean."""
    mask = torch.zeros(n, length + pad, dtype=torch.bool)
    mask[:, pad:] = True
    tm = aggregation_weights(mask, "token-mean", 7)
    smtm = aggregation_weights(mask, "seq-mean-token-mean", 7)
    smts = aggregation_weights(mask, "seq-mean-token-sum", 7)
    torch.testing.assert_close(tm, smtm, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(smts, length * smtm, rtol=1e-6, atol=1e-7)


@given(masks(), st.integers(1, 20))
def test_sum_norm_modes_are_scaled_token_sum(mask, max_len):
    """seq-mean-token-sum-norm = seq-mean-token-sum / L, and token-sum-norm = B'/L · seq-mean-token-sum."""
    b = max(int((mask.sum(-1) > 0).sum()), 1)
    smts = aggregation_weights(mask, "seq-mean-token-sum", max_len)
    torch.testing.assert_close(
        aggregation_weights(mask, "seq-mean-token-sum-norm", max_len), smts / max_len, rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(
        aggregation_weights(mask, "token-sum-norm", max_len), smts * b / max_len, rtol=1e-6, atol=1e-7
    )


@given(masks(), st.sampled_from(AGG_MODES), st.floats(-3, 3), st.floats(-3, 3))
def test_linear_in_loss(mask, mode, a, b):
    """agg(a·ℓ1 + b·ℓ2) = a·agg(ℓ1) + b·agg(ℓ2)."""
    gen = torch.Generator().manual_seed(3)
    l1, l2 = torch.randn(mask.shape, generator=gen), torch.randn(mask.shape, generator=gen)
    torch.testing.assert_close(
        agg(mask, a * l1 + b * l2, mode),
        a * agg(mask, l1, mode) + b * agg(mask, l2, mode),
        rtol=1e-4,
        atol=1e-5,
    )


@given(masks(), st.sampled_from(AGG_MODES), st.integers(0, 3), st.integers(0, 3))
def test_padding_is_ignored(mask, mode, left, right):
    """Padding columns (m = 0) on either side, and any loss value there, change nothing."""
    loss = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    n = mask.shape[0]
    wide_mask = torch.cat(
        [torch.zeros(n, left, dtype=torch.bool), mask, torch.zeros(n, right, dtype=torch.bool)], 1
    )
    wide_loss = torch.cat([torch.full((n, left), 1e6), loss, torch.full((n, right), -1e6)], 1)
    assert float(aggregation_weights(wide_mask, mode, 8)[~wide_mask].abs().sum()) == 0
    torch.testing.assert_close(agg(wide_mask, wide_loss, mode), agg(mask, loss, mode), rtol=1e-5, atol=1e-5)


@given(masks(min_rows=2), st.sampled_from(AGG_MODES), st.integers(1, 4))
def test_microbatches_add_up(mask, mode, k):
    """With weights from the whole step, any row split's weighted sums add up to the step's."""
    k = k % mask.shape[0] or 1
    loss = torch.randn(mask.shape, generator=torch.Generator().manual_seed(2))
    w = aggregation_weights(mask, mode, 8)
    parts = (w[:k] * loss[:k]).sum() + (w[k:] * loss[k:]).sum()
    torch.testing.assert_close(parts, (w * loss).sum(), rtol=1e-5, atol=1e-6)


def test_errors():
    """Unknown mode, non-2-D mask and max_len < 1 raise LmixError."""
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(LmixError, match="'agg' must be one of"):
        aggregation_weights(mask, "sum", 3)  # type: ignore[arg-type]
    with pytest.raises(LmixError, match="2-D"):
        aggregation_weights(mask[0], "token-mean", 3)
    with pytest.raises(LmixError, match="max_len"):
        aggregation_weights(mask, "seq-mean-token-sum-norm", 0)
    with pytest.raises(LmixError, match="'agg_rows' must be one of"):
        aggregation_weights(mask, "token-mean", 3, rows="some")  # type: ignore[arg-type]
    with pytest.raises(LmixError, match="summed over every data-parallel rank"):
        aggregation_weights(MASK, "token-mean", 3, StepCounts.of(MASK[:1]))


def test_step_counts_by_hand():
    """StepCounts.of counts tokens, non-empty rows and all rows; + adds counts and ranks; the tensor round-trips."""
    c = StepCounts.of(MASK)
    assert c == StepCounts(tokens=4, rows=2, all_rows=3, ranks=1)
    two = c + StepCounts.of(MASK[:1])
    assert two == StepCounts(tokens=7, rows=3, all_rows=4, ranks=2)
    assert StepCounts.from_tensor(two.as_tensor(), ranks=2) == two
    with pytest.raises(ValueError, match="'rows' must be <= 'all_rows'"):
        StepCounts(tokens=1, rows=2, all_rows=1)


def test_counts_of_own_mask_change_nothing():
    """Passing the mask's own counts gives the weights computed without counts, exactly."""
    for mode in AGG_MODES:
        for rows in AGG_ROWS:
            torch.testing.assert_close(
                aggregation_weights(MASK, mode, 8, StepCounts.of(MASK), rows=rows),
                aggregation_weights(MASK, mode, 8, rows=rows),
                rtol=0,
                atol=0,
            )


def test_data_parallel_weights_by_hand():
    """Two ranks, rank 0 with the 3-token row, rank 1 with the 1-token row and the empty one (global T = 4,
    B' = 2, B = 3, W = 2): each rank's weights are W × the global ones, e.g. token-mean 2/4 on every token,
    where normalising by the rank's own counts would give 1/3 and 1/1."""
    counts = StepCounts.of(MASK[:1]) + StepCounts.of(MASK[1:])
    w0 = aggregation_weights(MASK[:1], "token-mean", 8, counts)
    w1 = aggregation_weights(MASK[1:], "token-mean", 8, counts)
    torch.testing.assert_close(w0, torch.tensor([[0.5, 0.5, 0.5, 0.0]]), rtol=0, atol=0)
    torch.testing.assert_close(w1, torch.tensor([[0.0, 0.5, 0.0, 0.0], [0.0] * 4]), rtol=0, atol=0)
    # seq-mean-token-mean over B = 3: rank 0's row weighs 2/(3·3) per token, rank 1's 2/(1·3).
    w1 = aggregation_weights(MASK[1:], "seq-mean-token-mean", 8, counts, rows="all")
    torch.testing.assert_close(w1[0, 1], torch.tensor(2 / 3), rtol=1e-6, atol=0)
    # token-sum-norm has no count in it: only the factor W.
    w0 = aggregation_weights(MASK[:1], "token-sum-norm", 8, counts)
    torch.testing.assert_close(w0, 2 * MASK[:1].float() / 8, rtol=0, atol=0)


@given(masks(min_rows=2, max_rows=6), st.sampled_from(AGG_MODES), st.sampled_from(AGG_ROWS), st.data())
def test_data_parallel_split_averages_to_global(mask, mode, rows, data):
    """Any split of the rows over W ranks, with the summed counts: the rank weights concatenated, divided by W,
    are the one-process weights, so the rank-averaged gradient is the global batch's (verl 0.9.1's dp_size)."""
    n = mask.shape[0]
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=3, unique=True)))
    bounds = [0, *cuts, n]
    parts = [mask[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    counts = StepCounts.of(parts[0])
    for p in parts[1:]:
        counts = counts + StepCounts.of(p)
    split = torch.cat([aggregation_weights(p, mode, 8, counts, rows=rows) for p in parts])
    torch.testing.assert_close(
        split / len(parts), aggregation_weights(mask, mode, 8, rows=rows), rtol=1e-6, atol=1e-8
    )
