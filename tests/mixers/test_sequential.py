"""SFT for ``sft_steps`` steps, then RL."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.config import build
from lmix_core.errors import ConfigError
from lmix_core.mixers.sequential import Sequential

from .helpers import inputs


@given(sft_steps=st.integers(0, 50), step=st.integers(0, 100))
def test_sequential_switches_at_exactly_sft_steps(sft_steps, step):
    """Steps < sft_steps are SFT-only, every later step RL-only; the decision agrees with the plan."""
    m = Sequential(Sequential.Config(sft_steps=sft_steps))
    plan = m.plan(step)
    is_sft = step < sft_steps
    assert (plan.sft, plan.rollouts) == (is_sft, not is_sft)
    d = m.mix(inputs(step, None if is_sft else [[1, 0]], qids=(5,)))
    assert d.label == ("sft" if is_sft else "rl")
    assert (d.sft_coef, d.rl_coef) == ((1.0, 0.0) if is_sft else (0.0, 1.0))
    assert d.sft == (((5, 1.0),) if is_sft else ())


def test_sequential_boundary_by_hand():
    """sft_steps = 3: steps 0, 1, 2 are SFT and step 3 is the first RL step."""
    m = Sequential(Sequential.Config(sft_steps=3))
    assert [m.plan(t).sft for t in range(5)] == [True, True, True, False, False]


def test_sequential_rejects_negative_steps():
    """sft_steps must be >= 0."""
    with pytest.raises(ConfigError, match="sft_steps"):
        build(Sequential.Config, sft_steps=-1)
