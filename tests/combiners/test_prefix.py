"""Prefix-RFT (arXiv 2507.01679): the prefix schedule, rollout plans, prefix masks and the entropy top-k."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core import registries
from lmix_core.combiners.prefix import Prefix, top_entropy_mask
from lmix_core.config import build
from lmix_core.errors import BackendError, ConfigError
from lmix_core.testing.combiner import check_combiner, layout
from lmix_core.types import Generation, TokenBatch

ZERO = {"ratio_start": 0.0, "ratio_end": 0.0}
LUFFY = {
    "ratio_start": 1.0,
    "ratio_end": 1.0,
    "schedule": "constant",
    "num_prefixed": 1,
    "prefix_loss": "luffy",
    "entropy_top_fraction": 1.0,
}


def prefix(**config):
    return Prefix(Prefix.Config(**config))


def plan(combiner, lengths, group, step=0, seed=0):
    return combiner.plan_rollouts(
        step=step,
        demo_lengths=torch.tensor(lengths, dtype=torch.long),
        group_size=group,
        generator=torch.Generator().manual_seed(seed),
    )


def generation(prompt_lengths, prefix_lengths, continuation_lengths, pad=2):
    """A ``Generation`` laid out ``[prompt][forced prefix][continuation][pad]``, token ids 1 + position."""
    width = max(p + f + c for p, f, c in zip(prompt_lengths, prefix_lengths, continuation_lengths)) + pad
    resp = [f + c for f, c in zip(prefix_lengths, continuation_lengths)]
    mask, prefix_mask = layout(prompt_lengths, resp, prefix_lengths, width)
    real = layout([0] * len(resp), [p + r for p, r in zip(prompt_lengths, resp)], [0] * len(resp), width)[0]
    ids = (torch.arange(width)[None, :] + 1) * real  # [N, S]
    tokens = TokenBatch(input_ids=ids, attention_mask=real.long(), loss_mask=mask)
    return Generation(
        tokens=tokens,
        prefix_mask=prefix_mask,
        completions=("",) * len(resp),
        truncated=torch.zeros(len(resp), dtype=torch.bool),
    )


def test_registered_and_declared():
    """Registered as ``prefix``; no reference; deploys the policy; needs entropy for the default top-20%."""
    assert registries.combiners.get("prefix") is Prefix
    c = Prefix.default()
    assert c.num_references == 0 and c.deploy == "policy" and c.needs_entropy is True
    assert (c.config.ratio_start, c.config.ratio_end, c.config.schedule) == (0.95, 0.05, "cosine")
    assert c.config.entropy_top_fraction == 0.2 and c.config.entropy_scope == "batch"


@pytest.mark.parametrize(("fraction", "needed"), [(0.2, True), (0.999, True), (1.0, False), (0.0, False)])
def test_needs_entropy_only_for_a_strict_fraction(fraction, needed):
    """Entropy is read only when some but not all prefix tokens are kept (0 < f < 1)."""
    assert prefix(entropy_top_fraction=fraction).needs_entropy is needed


def test_mix_is_the_policy():
    """``mix_logits`` returns the policy logits; reference logits are a backend error."""
    z = torch.randn(2, 5)
    assert Prefix.default().mix_logits(z, []) is z
    with pytest.raises(BackendError, match="takes 0 reference logits tensors"):
        Prefix.default().mix_logits(z, [z])


def test_cosine_schedule_by_hand():
    """r_0 = 0.95, r_T = 0.05, r_{T/2} = 0.05 + 0.9·(1 + cos(π/2))/2 = 0.5, held at 0.05 after T."""
    c = prefix(schedule_steps=100)
    assert c.ratio(0) == pytest.approx(0.95, abs=1e-12)
    assert c.ratio(50) == pytest.approx(0.5, abs=1e-12)
    assert c.ratio(100) == pytest.approx(0.05, abs=1e-12)
    assert c.ratio(10**6) == pytest.approx(0.05, abs=1e-12)


@given(st.integers(1, 1000), st.integers(0, 1200))
def test_cosine_schedule_is_non_increasing_within_its_ends(steps, step):
    """The default schedule decays monotonically and stays within [0.05, 0.95]."""
    c = prefix(schedule_steps=steps)
    assert 0.05 - 1e-12 <= c.ratio(step) <= 0.95 + 1e-12
    assert c.ratio(step + 1) <= c.ratio(step) + 1e-12


def test_fixed_plan_by_hand():
    """Step 0, |y*| = [20, 7, 0]: L = round(0.95·|y*|) = [19, 7 (6.65), 0] on the first rollout only."""
    out = plan(Prefix.default(), [20, 7, 0], group=4)
    assert out.tolist() == [[19, 0, 0, 0], [7, 0, 0, 0], [0, 0, 0, 0]]


def test_half_way_plan_rounds_half_to_even():
    """At r = 0.5, |y*| = 5 → 2.5 → 2 and |y*| = 7 → 3.5 → 4 (round half to even), two prefixed rollouts."""
    out = plan(prefix(ratio_start=0.5, schedule="constant", num_prefixed=2), [5, 7], group=3)
    assert out.tolist() == [[2, 2, 0], [4, 4, 0]]


@given(
    st.lists(st.integers(0, 300), min_size=0, max_size=6),
    st.integers(1, 8),
    st.integers(0, 8),
    st.sampled_from(["fixed", "uniform"]),
    st.integers(0, 700),
    st.integers(0, 2**31 - 1),
)
def test_plan_bounds_and_structure(lengths, group, num_prefixed, length, step, seed):
    """0 ≤ L ≤ |y*|; only the first min(k, G) rollouts can be prefixed; fixed L = round(r·|y*|) exactly."""
    c = prefix(num_prefixed=num_prefixed, length=length, schedule_steps=500)
    out = plan(c, lengths, group, step=step, seed=seed)
    lens = torch.tensor(lengths, dtype=torch.long)
    assert out.shape == (len(lengths), group) and out.dtype == torch.long
    assert bool((out >= 0).all()) and bool((out <= lens[:, None]).all())
    k = min(num_prefixed, group)
    assert not bool(out[:, k:].any())
    cap = torch.round(c.ratio(step) * lens.double()).long()  # [Q]
    if length == "fixed":
        assert torch.equal(out[:, :k], cap[:, None].expand(-1, k))
    else:
        assert bool((out[:, :k] <= cap[:, None]).all())
        assert torch.equal(out, plan(c, lengths, group, step=step, seed=seed))


def test_uniform_lengths_spread_over_the_range():
    """Uniform draws cover [0, round(r·|y*|)] and change with the seed."""
    c = prefix(length="uniform", num_prefixed=8)
    a = plan(c, [100] * 50, group=8, seed=1)
    b = plan(c, [100] * 50, group=8, seed=2)
    assert not torch.equal(a, b)
    assert int(a.min()) <= 5 and int(a.max()) >= 90 and int(a.max()) <= 95


@given(st.lists(st.integers(0, 300), max_size=5), st.integers(1, 8), st.integers(0, 10**6))
def test_ratio_zero_plans_nothing(lengths, group, step):
    """Ratio 0 ⇒ the all-zero plan (plain GRPO)."""
    out = plan(prefix(**ZERO, num_prefixed=8, length="uniform"), lengths, group, step=step)
    assert not bool(out.any())


def test_luffy_group_structure():
    """Ratio 1 and one prefixed rollout: the first rollout is the whole demonstration, the rest on-policy."""
    out = plan(prefix(**LUFFY), [12, 0, 30], group=8, step=77)
    assert out[:, 0].tolist() == [12, 0, 30] and not bool(out[:, 1:].any())


@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 30), st.integers(0, 5)), min_size=1, max_size=6),
    st.integers(0, 500),
)
def test_prefix_mask_is_exactly_the_first_L_response_tokens(rows, step):
    """Planned lengths laid out as a Generation: the off-policy mark covers exactly response tokens [0, L)."""
    c = prefix(entropy_top_fraction=1.0, num_prefixed=1)
    demo_lengths = [d for _, d, _ in rows]
    plans = plan(c, demo_lengths, group=1, step=step)[:, 0].tolist()  # one rollout per question
    prompts = [p for p, _, _ in rows]
    gen = generation(prompts, plans, [cont for _, _, cont in rows])
    masks = c.loss_masks(mask=gen.tokens.loss_mask, prefix_mask=gen.prefix_mask, entropy=None, step=step)
    for i, (p, length) in enumerate(zip(prompts, plans)):
        marked = masks.offpolicy[i].nonzero().flatten().tolist()
        assert marked == list(range(p, p + length))
    torch.testing.assert_close(masks.token_weight, gen.tokens.loss_mask.float(), atol=0.0, rtol=0.0)


def test_ratio_zero_masks_are_the_response_mask():
    """With no prefixes the masks are plain GRPO's: weight 1 on every response token, nothing off-policy."""
    gen = generation([2, 1, 3], [0, 0, 0], [4, 6, 2])
    out = prefix(**ZERO).loss_masks(mask=gen.tokens.loss_mask, prefix_mask=gen.prefix_mask, entropy=None)
    torch.testing.assert_close(out.token_weight, gen.tokens.loss_mask.float(), atol=0.0, rtol=0.0)
    assert not bool(out.offpolicy.any()) and out.offpolicy_gamma is None


def test_entropy_top_k_by_hand():
    """Prefix entropies [0.1, 0.9, 0.5, 0.3, 0.7]: f = 0.2 keeps ⌈1⌉ = {0.9}; f = 0.5 keeps ⌈2.5⌉ = 3 tokens."""
    mask, pre = layout([1], [7], [5], 9)  # prefix at positions 1..5, continuation at 6..7
    entropy = torch.zeros(1, 9)
    entropy[0, 1:6] = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7])
    entropy[0, 6:8] = torch.tensor([0.0, 0.05])  # continuation: low entropy, still kept
    w = prefix(entropy_top_fraction=0.2).loss_masks(mask=mask, prefix_mask=pre, entropy=entropy).token_weight
    assert w[0].tolist() == [0, 0, 1, 0, 0, 0, 1, 1, 0]
    w = prefix(entropy_top_fraction=0.5).loss_masks(mask=mask, prefix_mask=pre, entropy=entropy).token_weight
    assert w[0].tolist() == [0, 0, 1, 1, 0, 1, 1, 1, 0]


def test_ceil_is_not_fooled_by_rounding():
    """0.7·10 = 7.000000000000001 in floating point, yet ⌈0.7·10⌉ keeps 7 tokens, not 8."""
    mask, pre = layout([0], [10], [10], 10)
    entropy = torch.arange(10, dtype=torch.float32)[None, :]
    w = prefix(entropy_top_fraction=0.7).loss_masks(mask=mask, prefix_mask=pre, entropy=entropy).token_weight
    assert int(w.sum()) == 7


@st.composite
def prefixed_batches(draw):
    """Rows with random prompt, prefix and continuation lengths, and distinct random entropies."""
    n = draw(st.integers(1, 5))
    prompts = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    prefixes = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    conts = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    width = max(p + f + c for p, f, c in zip(prompts, prefixes, conts)) + 1
    mask, pre = layout(prompts, [f + c for f, c in zip(prefixes, conts)], prefixes, width)
    perm = draw(st.permutations(range(n * width)))
    entropy = (
        torch.tensor(perm, dtype=torch.float32).reshape(n, width) / (n * width) * mask
    )  # distinct on mask
    fraction = draw(st.floats(0.01, 1.0))
    return mask, pre, entropy, fraction


@given(prefixed_batches(), st.sampled_from(["batch", "sequence"]))
def test_entropy_top_k_count_and_continuation_never_masked(batch, scope):
    """Exactly ⌈f·#prefix⌉ prefix tokens keep weight (per batch or per row); every continuation token keeps 1."""
    mask, pre, entropy, fraction = batch
    out = prefix(entropy_top_fraction=fraction, entropy_scope=scope).loss_masks(
        mask=mask, prefix_mask=pre, entropy=entropy
    )
    kept = (out.token_weight > 0) & pre  # [N, S]
    if scope == "batch":
        assert int(kept.sum()) == math.ceil(fraction * int(pre.sum()) - 1e-9)
        if bool(kept.any()) and bool((pre & ~kept).any()):
            assert float(entropy[kept].min()) > float(entropy[pre & ~kept].max())  # the kept ones are the top
    else:
        for i in range(mask.shape[0]):
            assert int(kept[i].sum()) == math.ceil(fraction * int(pre[i].sum()) - 1e-9)
    continuation = mask & ~pre
    assert bool((out.token_weight[continuation] == 1).all())
    assert bool((out.token_weight[~mask] == 0).all())
    assert torch.equal(out.offpolicy, pre)


@given(st.integers(1, 12), st.floats(0.01, 0.99))
def test_ties_with_the_threshold_are_kept(n, fraction):
    """All prefix tokens at one entropy tie with the k-th largest, so all keep their gradient (± ties)."""
    mask, pre = layout([0], [n], [n], n)
    keep = top_entropy_mask(torch.full((1, n), 0.3), pre, fraction, scope="batch")
    assert bool(keep.all())


def test_nan_entropy_counts_as_lowest():
    """A NaN entropy is never preferred over a finite one."""
    mask, pre = layout([0], [3], [3], 3)
    keep = top_entropy_mask(torch.tensor([[math.nan, 0.2, 0.1]]), pre, 0.3, scope="batch")  # ⌈0.9⌉ = 1
    assert keep[0].tolist() == [False, True, False]


def test_prefix_loss_modes():
    """``luffy`` asks the loss for LUFFY shaping with γ = luffy_gamma; ``ratio`` leaves prefix tokens ordinary."""
    mask, pre = layout([1], [4], [2], 6)
    ent = torch.rand(1, 6)
    assert (
        prefix(prefix_loss="luffy").loss_masks(mask=mask, prefix_mask=pre, entropy=ent).offpolicy_gamma == 0.1
    )
    lu = prefix(prefix_loss="luffy", luffy_gamma=0.5).loss_masks(mask=mask, prefix_mask=pre, entropy=ent)
    assert lu.offpolicy_gamma == 0.5
    assert Prefix.default().loss_masks(mask=mask, prefix_mask=pre, entropy=ent).offpolicy_gamma is None


def test_fraction_one_and_zero():
    """f = 1 keeps every prefix token without entropy; f = 0 drops them all without entropy."""
    mask, pre = layout([1, 0], [4, 3], [2, 3], 6)
    full = prefix(entropy_top_fraction=1.0).loss_masks(mask=mask, prefix_mask=pre, entropy=None)
    torch.testing.assert_close(full.token_weight, mask.float(), atol=0.0, rtol=0.0)
    none = prefix(entropy_top_fraction=0.0).loss_masks(mask=mask, prefix_mask=pre, entropy=None)
    torch.testing.assert_close(none.token_weight, (mask & ~pre).float(), atol=0.0, rtol=0.0)


def test_missing_entropy_is_a_backend_error():
    """With prefix tokens to rank and no entropy the combiner says what the backend must pass."""
    mask, pre = layout([1], [4], [2], 6)
    with pytest.raises(BackendError, match="pass the behaviour entropy"):
        Prefix.default().loss_masks(mask=mask, prefix_mask=pre, entropy=None)
    without = layout([1], [4], [0], 6)
    Prefix.default().loss_masks(
        mask=without[0], prefix_mask=without[1], entropy=None
    )  # nothing to rank: fine


def test_prefix_mask_outside_the_response_is_ignored():
    """Forced marks outside the loss mask are not off-policy tokens (``offpolicy`` ⊆ ``mask``)."""
    mask, _ = layout([2], [3], [0], 6)
    stray = torch.ones_like(mask)
    out = prefix(entropy_top_fraction=1.0).loss_masks(mask=mask, prefix_mask=stray, entropy=None)
    assert torch.equal(out.offpolicy, mask)


def test_config_validation():
    """Out-of-range fractions and unknown modes are rejected by the Config."""
    for table, match in [
        ({"ratio_start": 1.2}, "'ratio_start' must be <= 1"),
        ({"entropy_top_fraction": -0.1}, "'entropy_top_fraction' must be >= 0"),
        ({"num_prefixed": -1}, "'num_prefixed' must be >= 0"),
        ({"luffy_gamma": 0.0}, "'luffy_gamma' must be > 0"),
        ({"length": "poisson"}, "length"),
        ({"prefix_loss": "sft"}, "prefix_loss"),
        ({"entropy_scope": "token"}, "entropy_scope"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build(Prefix.Config, table)


@pytest.mark.parametrize(
    "config",
    [
        {},
        ZERO,
        LUFFY,
        {"length": "uniform", "num_prefixed": 3, "entropy_scope": "sequence", "schedule": "linear"},
    ],
)
def test_passes_the_combiner_contract(config):
    """``prefix`` satisfies ``check_combiner`` in its Prefix-RFT, GRPO, LUFFY and uniform-length settings."""
    check_combiner(prefix(**config))
