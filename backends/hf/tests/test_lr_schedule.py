"""The learning-rate schedule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmix_hf.lr_schedule import lr_at


def test_examples():
    """Warm-up 4 steps to lr 1.0, then linear decay to 0.1 over 10 steps (hand-computed)."""
    kw = dict(lr=1.0, shape="linear", warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    # warm-up: (s + 1)/4; then 1 − 0.9·(s − 4)/10; held at 0.1 after step 14
    expected = {0: 0.25, 3: 1.0, 4: 1.0, 9: 0.55, 14: 0.1, 20: 0.1}
    assert {s: lr_at(s, **kw) for s in expected} == pytest.approx(expected, abs=1e-12)
    assert lr_at(7, lr=0.5, shape="constant", warmup_steps=0, total_steps=0, min_lr_ratio=0.0) == 0.5


@given(
    st.sampled_from(["cosine", "linear"]),
    st.integers(0, 5),
    st.integers(1, 30),
    st.floats(0.0, 1.0),
)
def test_decay_is_monotone_and_bounded(shape, warmup, span, ratio):
    """After warm-up the rate never increases and stays within [lr · min_lr_ratio, lr]."""
    total = warmup + span
    values = [lr_at(s, lr=2.0, shape=shape, warmup_steps=warmup, total_steps=total, min_lr_ratio=ratio) for s in
              range(warmup, total + 3)]  # fmt: skip
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))
    assert all(2.0 * ratio - 1e-12 <= x <= 2.0 + 1e-12 for x in values)
    assert values[-1] == pytest.approx(2.0 * ratio, abs=1e-12)
