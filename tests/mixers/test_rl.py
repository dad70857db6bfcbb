"""The pure-RL mixer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lmix_core.mixers.rl import RL
from lmix_core.types import StepPlan

from .helpers import inputs


@given(step=st.integers(0, 10_000))
def test_rl_always_samples_and_never_uses_demonstrations(step):
    """Every step: rollouts, no SFT."""
    assert RL.default().plan(step) == StepPlan(rollouts=True, sft=False)


def test_rl_weights_every_question_once():
    """rl_coef 1, weight 1 per question, no SFT term."""
    d = RL.default().mix(inputs(3, [[1, 0], [0, 0], [1, 1]]))
    assert (d.rl_coef, d.sft_coef, d.rl_weights, d.sft, d.label) == (1.0, 0.0, (1.0, 1.0, 1.0), (), "rl")


def test_rl_without_rollouts_is_empty():
    """No rewards → no RL term (rl_coef 0, zero weights)."""
    d = RL.default().mix(inputs(0, None, qids=(4, 5)))
    assert (d.rl_coef, d.sft_coef, d.rl_weights, d.sft) == (0.0, 0.0, (0.0, 0.0), ())
