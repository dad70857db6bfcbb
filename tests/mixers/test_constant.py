"""(1 − μ)·RL + μ·SFT with a fixed μ."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.config import build
from lmix_core.errors import ConfigError
from lmix_core.mixers.constant import Constant

from .helpers import inputs


def test_constant_default_by_hand():
    """μ = 0.1 (Trinity MIX): rl_coef 0.9, sft_coef 0.1, both over the step's questions."""
    m = Constant.default()
    d = m.mix(inputs(0, [[1, 0], [0, 0]], qids=(4, 8)))
    assert (d.rl_coef, d.sft_coef, d.rl_weights, d.sft, d.label) == (
        pytest.approx(0.9, abs=1e-12),
        0.1,
        (1.0, 1.0),
        ((4, 1.0), (8, 1.0)),
        "mixed",
    )


@given(mu=st.floats(0.0, 1.0), step=st.integers(0, 1000))
def test_constant_coefficients_sum_to_one(mu, step):
    """rl_coef + sft_coef = 1 whenever both terms can run, and each is in [0, 1]."""
    m = Constant(Constant.Config(mu=mu))
    plan = m.plan(step)
    d = m.mix(inputs(step, [[1, 0, 0]] if plan.rollouts else None, qids=(1,)))
    assert 0.0 <= d.rl_coef <= 1.0 and 0.0 <= d.sft_coef <= 1.0
    assert d.rl_coef + d.sft_coef == pytest.approx(1.0, abs=1e-12)


def test_constant_mu_zero_is_pure_rl_and_mu_one_pure_sft():
    """μ = 0: rollouts and RL only; μ = 1: no rollouts and SFT only."""
    rl = Constant(Constant.Config(mu=0.0))
    assert (rl.plan(0).rollouts, rl.plan(0).sft) == (True, False)
    d = rl.mix(inputs(0, [[1, 1]]))
    assert (d.rl_coef, d.sft_coef, d.sft, d.label) == (1.0, 0.0, (), "rl")
    sft = Constant(Constant.Config(mu=1.0))
    assert (sft.plan(0).rollouts, sft.plan(0).sft) == (False, True)
    d = sft.mix(inputs(0, None, qids=(3,)))
    assert (d.rl_coef, d.sft_coef, d.rl_weights, d.sft, d.label) == (0.0, 1.0, (0.0,), ((3, 1.0),), "sft")


def test_constant_rejects_mu_outside_unit_interval():
    """μ must lie in [0, 1]."""
    with pytest.raises(ConfigError, match="mu"):
        build(Constant.Config, mu=1.5)
