"""ReLIFT: a buffer of all-wrong questions and an SFT update on N of them (arXiv 2506.07527)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lmix_core.mixers.relift import ReLIFT

from .helpers import inputs

steps_st = st.lists(
    st.lists(st.lists(st.integers(0, 1), min_size=3, max_size=3), min_size=1, max_size=5),
    min_size=1,
    max_size=25,
)


def test_separate_sft_step_by_hand():
    """N = 2: all-wrong q0 at step 0 and q5, q6 at step 1 fill the buffer; step 2 is SFT on (0, 5) only."""
    m = ReLIFT(ReLIFT.Config(buffer_size=2))
    d0 = m.mix(inputs(0, [[0, 0], [1, 0]], qids=(0, 1)))
    assert m.buffer == (0,) and d0.label == "rl"
    d1 = m.mix(inputs(1, [[0, 0], [0, 0], [0, 1]], qids=(5, 6, 7)))
    assert m.buffer == (0, 5, 6) and d1.sft == () and d1.rl_coef == 1.0  # the RL step itself stays RL
    plan = m.plan(2)
    assert (plan.rollouts, plan.sft) == (False, True)
    d2 = m.mix(inputs(2, None, qids=(8, 9)))
    assert (d2.rl_coef, d2.rl_weights, d2.sft_coef, d2.sft, d2.label) == (
        0.0,
        (0.0, 0.0),
        1.0,
        ((0, 1.0), (5, 1.0)),
        "sft",
    )
    assert m.buffer == (6,)
    assert m.plan(3).rollouts


def test_joint_adds_sft_to_the_filling_step():
    """joint, N = 2: the step that fills the buffer trains RL and SFT on the 2 oldest together."""
    m = ReLIFT(ReLIFT.Config(buffer_size=2, sft_step="joint"))
    m.mix(inputs(0, [[0, 0]], qids=(4,)))
    d = m.mix(inputs(1, [[0, 0], [1, 1]], qids=(7, 8)))
    assert (d.rl_coef, d.rl_weights, d.sft_coef, d.sft, d.label) == (
        1.0,
        (1.0, 1.0),
        1.0,
        ((4, 1.0), (7, 1.0)),
        "mixed",
    )
    assert m.buffer == ()


@given(steps=steps_st, N=st.integers(1, 6), mode=st.sampled_from(["separate", "joint"]))
def test_only_all_wrong_enter_and_sft_iff_buffer_full_consuming_exactly_n(steps, N, mode):
    """Against a plain-list model: all-wrong groups are appended; SFT happens iff ≥ N are buffered, taking the N oldest."""
    m = ReLIFT(ReLIFT.Config(buffer_size=N, sft_step=mode))
    model: list[int] = []
    next_q = 0
    for t, correct in enumerate(steps):
        plan = m.plan(t)
        if mode == "separate":
            assert plan.sft == (len(model) >= N) and plan.rollouts == (not plan.sft)
        qids = tuple(range(next_q, next_q + len(correct)))
        next_q += len(correct)
        d = m.mix(inputs(t, correct if plan.rollouts else None, qids=qids))
        if plan.rollouts:
            model += [q for q, row in zip(qids, correct) if sum(row) == 0]
        if len(model) >= N and (mode == "joint" or not plan.rollouts):
            assert d.sft == tuple((q, 1.0) for q in model[:N])
            model = model[N:]
        else:
            assert d.sft == () and d.sft_coef == 0.0
        assert m.buffer == tuple(model)


def test_state_dict_keeps_the_buffer():
    """The buffer survives state_dict / load_state_dict."""
    m = ReLIFT(ReLIFT.Config(buffer_size=10))
    m.mix(inputs(0, [[0, 0], [0, 0]], qids=(3, 9)))
    fresh = ReLIFT(ReLIFT.Config(buffer_size=10))
    fresh.load_state_dict(m.state_dict())
    assert fresh.buffer == (3, 9)
