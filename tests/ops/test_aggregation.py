"""Aggregation modes as per-token weights (algorithm note §7 "Loss aggregation modes", §8 "Aggregation")."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.errors import LmixError
from lmix_core.ops.aggregation import AGG_MODES, aggregation_weights


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


def agg(mask: torch.Tensor, loss: torch.Tensor, mode: str, max_len: int = 8) -> torch.Tensor:
    return (aggregation_weights(mask, mode, max_len) * loss).sum()


def verl_agg_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int) -> torch.Tensor:
    """verl's ``agg_loss`` written out (over non-empty rows; verl divides by all rows)."""
    m = mask.float()
    keep = m.sum(-1) > 0
    if mode == "token-mean":
        return (loss * m).sum() / m.sum()
    if mode == "seq-mean-token-sum":
        return (loss * m).sum(-1)[keep].mean()
    if mode == "seq-mean-token-mean":
        return ((loss * m).sum(-1)[keep] / m.sum(-1)[keep]).mean()
    return (loss * m).sum() / max_len


def test_weights_by_hand():
    """Rows of 3, 1 and 0 tokens: token-mean 1/4; seq-mean-token-mean 1/(3·2), 1/(1·2); token-sum 1/2; norm 1/L."""
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    m = mask.float()
    torch.testing.assert_close(aggregation_weights(mask, "token-mean", 8), m / 4, rtol=0, atol=0)
    expected = torch.tensor([[1 / 6] * 3 + [0], [0, 0.5, 0, 0], [0] * 4])
    torch.testing.assert_close(
        aggregation_weights(mask, "seq-mean-token-mean", 8), expected, rtol=0, atol=1e-7
    )
    torch.testing.assert_close(aggregation_weights(mask, "seq-mean-token-sum", 8), m / 2, rtol=0, atol=0)
    torch.testing.assert_close(aggregation_weights(mask, "seq-mean-token-sum-norm", 8), m / 8, rtol=0, atol=0)


def test_empty_mask_gives_zero_weights():
    """No tokens: every mode gives all-zero (finite) weights."""
    for mode in AGG_MODES:
        w = aggregation_weights(torch.zeros(2, 3, dtype=torch.bool), mode, 4)
        assert w.eq(0).all() and w.dtype == torch.float32


@given(masks(min_tokens=1), st.sampled_from(AGG_MODES), st.integers(1, 20))
def test_matches_verl_agg_loss(mask, mode, max_len):
    """Σ w·ℓ equals verl's agg_loss for every mode."""
    loss = torch.randn(mask.shape, generator=torch.Generator().manual_seed(int(mask.sum())))
    torch.testing.assert_close(
        agg(mask, loss, mode, max_len), verl_agg_loss(loss, mask, mode, max_len), rtol=1e-5, atol=1e-6
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
def test_token_sum_norm_is_scaled_token_sum(mask, max_len):
    """verl's seq-mean-token-sum-norm = B'·L⁻¹ · seq-mean-token-sum (B' = non-empty rows)."""
    b = max(int((mask.sum(-1) > 0).sum()), 1)
    torch.testing.assert_close(
        aggregation_weights(mask, "seq-mean-token-sum-norm", max_len),
        aggregation_weights(mask, "seq-mean-token-sum", max_len) * b / max_len,
        rtol=1e-6,
        atol=1e-7,
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
