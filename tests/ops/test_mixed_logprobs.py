"""Chunked mixed log-probs and entropy equal the naive formula, values and gradients, for any row-wise mix."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.combiners.policy import Policy
from lmix_core.combiners.weighted import Weighted
from lmix_core.errors import BackendError
from lmix_core.ops.mixed_logprobs import (
    auto_chunk_size,
    geometric_mix,
    mixed_token_loss,
    mixed_token_stats,
    reference_token_stats,
)

ATOL = 1e-5
RTOL = 1e-5


def _gated(z_pol, z_refs):
    """A non-linear mix whose Jacobian is not a multiple of the identity (exercises the chain rule)."""
    gate = torch.sigmoid(z_pol.mean(-1, keepdim=True))  # [c, 1]
    return gate * z_pol + 0.3 * z_refs[0].detach()  # [c, V]


def _tanh(z_pol, z_refs):
    """An element-wise non-linear mix of the policy with two references."""
    return 3.0 * torch.tanh(z_pol / 3.0) + 0.5 * z_refs[0].detach() - 0.2 * z_refs[1].detach()  # [c, V]


# (label, number of references, mix factory taking the step) for the mixes the tests draw from
MIXES = {
    "policy-alone": (0, lambda step: None),
    "policy-combiner": (0, lambda step: functools.partial(Policy.default().mix_logits, step=step)),
    "logit_average": (1, lambda step: functools.partial(LogitAverage.default().mix_logits, step=step)),
    "logit_average-0.2": (
        1,
        lambda step: functools.partial(LogitAverage(LogitAverage.Config(alpha=0.2)).mix_logits, step=step),
    ),
    "weighted-2refs": (
        2,
        lambda step: functools.partial(
            Weighted(
                Weighted.Config(
                    ref_weights=(0.25, 0.75),
                    alpha_start=0.9,
                    alpha_end=0.1,
                    schedule="cosine",
                    schedule_steps=8,
                )
            ).mix_logits,
            step=step,
        ),
    ),
    "gated": (1, lambda step: _gated),
    "tanh-2refs": (2, lambda step: _tanh),
}


@st.composite
def problems(draw, dtype=torch.float32):
    """A small random problem: policy head, K reference heads, targets, upstream gradients and a chunking.

    Entries are N(0, s²), so logits are about s²·√H: up to ~±40 in fp32 (LLM-like; far larger logits lose
    fp32 digits in the naive formula and the chunked one alike), up to several hundred in float64.
    """
    n = draw(st.integers(1, 9))
    hidden = draw(st.integers(1, 6))
    vocab = draw(st.integers(2, 12))
    label = draw(st.sampled_from(sorted(MIXES)))
    k, factory = MIXES[label]
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.5, 1.0, 2.0] if dtype == torch.float32 else [0.5, 2.0, 6.0]))

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).mul(scale).to(dtype)

    ref_hidden = [draw(st.integers(1, 6)) for _ in range(k)]
    return {
        "h": randn(n, hidden),
        "w": randn(vocab, hidden),
        "h_refs": [randn(n, hk) for hk in ref_hidden],
        "w_refs": [randn(vocab, hk) for hk in ref_hidden],
        "targets": torch.randint(0, vocab, (n,), generator=gen),
        "g": torch.randn(n, generator=gen, dtype=torch.float64).to(dtype),
        "g_ent": torch.randn(n, generator=gen, dtype=torch.float64).to(dtype),
        "mix": factory(draw(st.integers(0, 10))),
        "label": label,
        "temperature": draw(st.sampled_from([1.0, 0.7, 1.6])),
        "chunk": draw(st.integers(1, 10)),
    }


def _leaves(p):
    return p["h"].clone().requires_grad_(True), p["w"].clone().requires_grad_(True)


def _naive(p, *, entropy=True):
    h, w = _leaves(p)
    stats = reference_token_stats(
        h, w, p["h_refs"], p["w_refs"], p["targets"], p["mix"], temperature=p["temperature"], entropy=entropy
    )
    return stats, h, w


def _chunked(p, *, entropy=True):
    h, w = _leaves(p)
    stats = mixed_token_stats(
        h,
        w,
        p["h_refs"],
        p["w_refs"],
        p["targets"],
        p["mix"],
        temperature=p["temperature"],
        chunk_size=p["chunk"],
        entropy=entropy,
    )
    return stats, h, w


@given(problems())
def test_values_and_gradients_match_naive_fp32(p):
    """logp, entropy and their gradients w.r.t. h and W equal the naive formula within 1e-5 in fp32."""
    (naive, h0, w0), (chunked, h1, w1) = _naive(p), _chunked(p)
    torch.testing.assert_close(chunked.logp, naive.logp, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(chunked.entropy, naive.entropy, atol=ATOL, rtol=RTOL)
    ((naive.logp * p["g"]).sum() + (naive.entropy * p["g_ent"]).sum()).backward()
    ((chunked.logp * p["g"]).sum() + (chunked.entropy * p["g_ent"]).sum()).backward()
    torch.testing.assert_close(h1.grad, h0.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(w1.grad, w0.grad, atol=ATOL, rtol=RTOL)


@given(problems(), st.sampled_from(["logp", "entropy"]))
def test_each_output_alone_has_the_naive_gradient(p, which):
    """Differentiating only log-probs (or only entropy) gives that term's naive gradient (the other is None)."""
    (naive, h0, w0), (chunked, h1, w1) = _naive(p), _chunked(p)
    weight = p["g"] if which == "logp" else p["g_ent"]
    (getattr(naive, which) * weight).sum().backward()
    (getattr(chunked, which) * weight).sum().backward()
    torch.testing.assert_close(h1.grad, h0.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(w1.grad, w0.grad, atol=ATOL, rtol=RTOL)


@given(problems(dtype=torch.float64))
def test_float64_matches_to_1e_10(p):
    """In float64 the chunked and naive results agree to 1e-10 (the statistics are kept in float64)."""
    (naive, h0, w0), (chunked, h1, w1) = _naive(p), _chunked(p)
    assert chunked.logp.dtype == torch.float64
    ((naive.logp * p["g"]).sum() + (naive.entropy * p["g_ent"]).sum()).backward()
    ((chunked.logp * p["g"]).sum() + (chunked.entropy * p["g_ent"]).sum()).backward()
    torch.testing.assert_close(chunked.logp, naive.logp, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(chunked.entropy, naive.entropy, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h1.grad, h0.grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(w1.grad, w0.grad, atol=1e-10, rtol=1e-10)


@given(problems(), st.sampled_from(["linear", "ppo-like", "entropy-only"]))
def test_fused_loss_matches_naive(p, kind):
    """``mixed_token_loss`` gives the naive loss and gradients for a token-separable non-linear loss."""
    g, g_ent = p["g"], p["g_ent"]

    def token_loss(logp, ent, rows):
        if kind == "linear":
            return g[rows] * logp + g_ent[rows] * ent
        if kind == "ppo-like":
            ratio = torch.exp(logp - 0.1 * g[rows])  # [c]
            return -torch.minimum(ratio * g_ent[rows], ratio.clamp(0.8, 1.2) * g_ent[rows]) + 0.01 * ent
        return g_ent[rows] * ent

    naive, h0, w0 = _naive(p)
    expected = token_loss(naive.logp, naive.entropy, slice(None)).sum()
    expected.backward()
    h1, w1 = _leaves(p)
    out = mixed_token_loss(
        h1,
        w1,
        p["h_refs"],
        p["w_refs"],
        p["targets"],
        p["mix"],
        token_loss,
        temperature=p["temperature"],
        chunk_size=p["chunk"],
    )
    torch.testing.assert_close(out.loss, expected.detach(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out.logp, naive.logp.detach(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out.entropy, naive.entropy.detach(), atol=ATOL, rtol=RTOL)
    (2.0 * out.loss).backward()
    torch.testing.assert_close(h1.grad, 2.0 * h0.grad, atol=2 * ATOL, rtol=RTOL)
    torch.testing.assert_close(w1.grad, 2.0 * w0.grad, atol=2 * ATOL, rtol=RTOL)


@given(problems())
def test_no_gradient_reaches_the_references(p):
    """Reference hidden states and heads that require grad receive none."""
    h_refs = [h.clone().requires_grad_(True) for h in p["h_refs"]]
    w_refs = [w.clone().requires_grad_(True) for w in p["w_refs"]]
    h, w = _leaves(p)
    stats = mixed_token_stats(h, w, h_refs, w_refs, p["targets"], p["mix"], chunk_size=p["chunk"])
    (stats.logp.sum() + stats.entropy.sum()).backward()
    assert all(t.grad is None for t in (*h_refs, *w_refs))
    assert h.grad is not None and w.grad is not None


def test_mix_sees_at_most_one_chunk_of_rows():
    """The mix is only ever called on chunks of at most ``chunk_size`` rows, forward and backward."""
    gen = torch.Generator().manual_seed(0)
    seen = []

    def recording_mix(z_pol, z_refs):
        seen.append(z_pol.shape[0])
        return geometric_mix(z_pol, z_refs, alpha=0.5, ref_weights=(1.0,))

    h = torch.randn(23, 4, generator=gen, requires_grad=True)
    w = torch.randn(9, 4, generator=gen, requires_grad=True)
    stats = mixed_token_stats(
        h, w, [torch.randn(23, 3, generator=gen)], [torch.randn(9, 3, generator=gen)], torch.zeros(23, dtype=torch.long),
        recording_mix, chunk_size=5,
    )  # fmt: skip
    (stats.logp.sum() + stats.entropy.sum()).backward()
    # 23 rows in chunks of 5: 5, 5, 5, 5, 3 in the forward pass, and again in the backward pass
    assert seen == [5, 5, 5, 5, 3] * 2


def test_hand_computed_example():
    """Two tokens, V = 2, identity heads: logit average of [ln 4, 0] and [0, 0] gives π = [2/3, 1/3]."""
    w = torch.eye(2)  # [V, H] with H = V: the hidden states are the logits
    h_pol = torch.tensor([[math.log(4.0), 0.0], [0.0, 0.0]])  # [N, H]
    h_ref = torch.zeros(2, 2)  # [N, H]
    mix = functools.partial(LogitAverage.default().mix_logits, step=0)
    stats = mixed_token_stats(h_pol, w, [h_ref], [w], torch.tensor([0, 1]), mix, chunk_size=1)
    # row 0: z_mix = 0.5·[ln 4, 0] = [ln 2, 0] → π = [2/3, 1/3]; log π(0) = ln(2/3)
    #        H = −(2/3·ln(2/3) + 1/3·ln(1/3)) = ln 3 − (2/3)·ln 2 ≈ 0.636514
    # row 1: z_mix = [0, 0] → uniform; log π(1) = −ln 2; H = ln 2
    expected_logp = torch.tensor([math.log(2 / 3), -math.log(2.0)])
    expected_ent = torch.tensor([math.log(3.0) - 2 / 3 * math.log(2.0), math.log(2.0)])
    torch.testing.assert_close(stats.logp, expected_logp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats.entropy, expected_ent, atol=1e-6, rtol=1e-6)


def test_gradient_is_alpha_times_e_a_minus_pi():
    """With identity heads, ∂ log π_mix(a)/∂h_θ = α·(e_a − π_mix) (the gradient w.r.t. the policy logits)."""
    gen = torch.Generator().manual_seed(3)
    alpha = 0.3
    z_pol = torch.randn(4, 5, generator=gen, dtype=torch.float64).requires_grad_(True)
    z_ref = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.float64)
    targets = torch.tensor([0, 4, 2, 2])
    mix = functools.partial(geometric_mix, alpha=alpha, ref_weights=(1.0,))
    mixed_token_stats(z_pol, eye, [z_ref], [eye], targets, mix, chunk_size=3).logp.sum().backward()
    pi = torch.softmax(alpha * z_pol.detach() + (1 - alpha) * z_ref, dim=-1)  # [N, V]
    expected = alpha * (torch.nn.functional.one_hot(targets, 5).double() - pi)  # [N, V]
    torch.testing.assert_close(z_pol.grad, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(z_pol.grad.sum(-1), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0.0)


def test_temperature_is_applied_after_mixing():
    """log π = log_softmax(mix(z_θ, z_ref)/T): computed by hand with identity heads."""
    z_pol = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    z_ref = torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    mix = functools.partial(geometric_mix, alpha=0.5, ref_weights=(1.0,))
    stats = mixed_token_stats(z_pol, eye, [z_ref], [eye], torch.tensor([2]), mix, temperature=0.5)
    # z_mix = [1, 0.5, 1]; /T = [2, 1, 2]; log π(2) = 2 − log(2e² + e)
    expected = 2.0 - math.log(2 * math.exp(2.0) + math.exp(1.0))
    assert stats.logp.item() == pytest.approx(expected, abs=1e-12)


def test_masked_vocabulary_entries_are_handled():
    """−inf (masked) combined logits give the statistics of the unmasked vocabulary, and finite gradients."""
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    banned = torch.tensor([False, True, False, False, True, False, False])  # [V]

    def masking_mix(z_pol, z_refs):
        return z_pol.masked_fill(banned, -math.inf)  # [c, V]

    targets = torch.tensor([0, 2, 3, 5, 6, 0])
    stats = mixed_token_stats(h, w, [], [], targets, lambda z, refs: masking_mix(z, refs), chunk_size=4)
    (stats.logp.sum() + stats.entropy.sum()).backward()
    keep = ~banned
    h2 = h.detach().clone().requires_grad_(True)
    w2 = w.detach().clone().requires_grad_(True)
    remap = torch.cumsum(keep.long(), 0) - 1  # old id → id in the reduced vocabulary
    ref = reference_token_stats(h2, w2[keep], [], [], remap[targets], None)
    (ref.logp.sum() + ref.entropy.sum()).backward()
    torch.testing.assert_close(stats.logp, ref.logp.detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(stats.entropy, ref.entropy.detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h.grad, h2.grad, atol=1e-10, rtol=1e-10)
    assert torch.isfinite(w.grad).all() and bool((w.grad[banned] == 0).all())


def test_entropy_off_returns_none_and_logp_gradient():
    """``entropy=False`` returns None for the entropy and the naive log-prob gradient."""
    gen = torch.Generator().manual_seed(5)
    p = {
        "h": torch.randn(5, 3, generator=gen),
        "w": torch.randn(8, 3, generator=gen),
        "h_refs": [],
        "w_refs": [],
        "targets": torch.tensor([1, 2, 3, 4, 7]),
        "mix": None,
        "temperature": 1.0,
        "chunk": 2,
    }
    (naive, h0, w0), (chunked, h1, w1) = _naive(p, entropy=False), _chunked(p, entropy=False)
    assert chunked.entropy is None and naive.entropy is None
    naive.logp.sum().backward()
    chunked.logp.sum().backward()
    torch.testing.assert_close(h1.grad, h0.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(w1.grad, w0.grad, atol=ATOL, rtol=RTOL)


def test_only_the_inputs_that_require_grad_get_one():
    """Frozen policy weights get no gradient while the hidden states do (and the other way round)."""
    gen = torch.Generator().manual_seed(6)
    h = torch.randn(4, 3, generator=gen, requires_grad=True)
    w = torch.randn(6, 3, generator=gen)
    mixed_token_stats(h, w, [], [], torch.tensor([0, 1, 2, 3]), None).logp.sum().backward()
    assert h.grad is not None and w.grad is None
    h2 = torch.randn(4, 3, generator=gen)
    w2 = torch.randn(6, 3, generator=gen, requires_grad=True)
    mixed_token_stats(h2, w2, [], [], torch.tensor([0, 1, 2, 3]), None).entropy.sum().backward()
    assert w2.grad is not None and h2.grad is None


def test_no_grad_mode_and_empty_input():
    """Under ``torch.no_grad`` the statistics are plain tensors; zero tokens give empty outputs."""
    gen = torch.Generator().manual_seed(7)
    h = torch.randn(3, 2, generator=gen, requires_grad=True)
    w = torch.randn(5, 2, generator=gen, requires_grad=True)
    with torch.no_grad():
        stats = mixed_token_stats(h, w, [], [], torch.tensor([0, 1, 4]), None)
    assert not stats.logp.requires_grad
    empty = mixed_token_stats(torch.zeros(0, 2), w, [], [], torch.zeros(0, dtype=torch.long), None)
    assert empty.logp.shape == (0,) and empty.entropy.shape == (0,)


def test_bfloat16_inputs_are_close_to_float32():
    """bf16 heads run and land within bf16 precision of the fp32 result."""
    gen = torch.Generator().manual_seed(8)
    h, w = torch.randn(6, 8, generator=gen), torch.randn(10, 8, generator=gen) * 0.3
    targets = torch.tensor([0, 1, 2, 3, 4, 9])
    hb = h.bfloat16().requires_grad_(True)
    wb = w.bfloat16().requires_grad_(True)
    stats = mixed_token_stats(hb, wb, [], [], targets, None, chunk_size=4)
    stats.logp.sum().backward()
    # the reference sees the same bf16-rounded inputs, computed in fp32
    ref = reference_token_stats(h.bfloat16().float(), w.bfloat16().float(), [], [], targets, None)
    assert stats.logp.dtype == torch.float32 and hb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(stats.logp, ref.logp, atol=1e-2, rtol=1e-2)


def test_reference_mismatches_raise_backend_errors():
    """Vocabulary mismatch, targets out of range, references without a mix and bad sizes are reported."""
    h, w = torch.zeros(3, 2), torch.zeros(5, 2)
    t = torch.tensor([0, 1, 2])
    mix = functools.partial(geometric_mix, alpha=0.5, ref_weights=(1.0,))
    with pytest.raises(BackendError, match="share the policy's vocabulary"):
        mixed_token_stats(h, w, [torch.zeros(3, 2)], [torch.zeros(6, 2)], t, mix)
    with pytest.raises(BackendError, match=r"targets must lie in \[0, 5\)"):
        mixed_token_stats(h, w, [], [], torch.tensor([0, 1, 5]), None)
    with pytest.raises(BackendError, match="mix=None scores the policy alone"):
        mixed_token_stats(h, w, [torch.zeros(3, 2)], [torch.zeros(5, 2)], t, None)
    with pytest.raises(BackendError, match="chunk_size must be >= 1"):
        mixed_token_stats(h, w, [], [], t, None, chunk_size=0)
    with pytest.raises(BackendError, match="temperature must be > 0"):
        mixed_token_stats(h, w, [], [], t, None, temperature=0.0)


def test_auto_chunk_size():
    """The automatic chunk holds about 64 MiB of fp32 logits, at least 8 tokens."""
    # 64 MiB / (4 bytes · 152064) = 110.3 → 110 tokens; a tiny vocabulary takes huge chunks
    assert auto_chunk_size(152064) == 110
    assert auto_chunk_size(10**9) == 8
    assert auto_chunk_size(100) == 64 * 2**20 // 400


def test_geometric_mix_zero_weight_drops_the_term():
    """α = 0 with −inf policy logits gives the reference exactly (no 0·∞ NaN) and a zero, connected gradient."""
    z_pol = torch.tensor([[0.0, -math.inf, 1.0]], requires_grad=True)
    z_ref = torch.tensor([[1.0, 2.0, 3.0]])
    out = geometric_mix(z_pol, [z_ref], alpha=0.0, ref_weights=(1.0,))
    torch.testing.assert_close(out.detach(), z_ref, atol=0.0, rtol=0.0)
    out.sum().backward()
    torch.testing.assert_close(z_pol.grad, torch.zeros_like(z_pol), atol=0.0, rtol=0.0)


def test_a_mix_that_ignores_the_policy_gives_zero_gradients():
    """A mix with no path to the policy logits yields exact zero gradients (never uninitialised memory)."""
    gen = torch.Generator().manual_seed(9)
    h = torch.randn(5, 3, generator=gen, requires_grad=True)
    w = torch.randn(6, 3, generator=gen, requires_grad=True)
    refs = ([torch.randn(5, 2, generator=gen)], [torch.randn(6, 2, generator=gen)])
    stats = mixed_token_stats(
        h, w, *refs, torch.tensor([0, 1, 2, 3, 5]), lambda z, zr: zr[0] * 1.0, chunk_size=2
    )
    (stats.logp.sum() + stats.entropy.sum()).backward()
    assert bool((w.grad == 0).all()) and bool((h.grad == 0).all())
    h2, w2 = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    out = mixed_token_loss(
        h2, w2, [], [], torch.tensor([0, 1, 2, 3, 5]), None, lambda lp, en, rows: 0.0 * lp.detach()
    )
    out.loss.backward()
    assert bool((w2.grad == 0).all()) and bool((h2.grad == 0).all())


def test_automatic_chunking_takes_the_plain_path_for_small_logits():
    """``chunk_size=None`` on small logits gives the chunked path's statistics and gradients (a mix with masked
    entries and the entropy included: finite values, no NaN); large ones stay chunked."""
    from lmix_core.ops.mixed_logprobs import PLAIN_BYTES, PLAIN_ENTROPY_BYTES, takes_plain_path

    assert takes_plain_path(512, 2048, 2, entropy=True) and takes_plain_path(4096, 4096, 1, entropy=False)
    assert not takes_plain_path(PLAIN_ENTROPY_BYTES // 4 + 1, 1, 1, entropy=True)
    assert not takes_plain_path(PLAIN_BYTES // 4, 2, 1, entropy=False)
    gen = torch.Generator().manual_seed(11)
    banned = torch.zeros(9, dtype=torch.bool)
    banned[3] = True

    def mix(z_pol, z_refs):
        return geometric_mix(z_pol, z_refs, alpha=0.4, ref_weights=(1.0,)).masked_fill(banned, -math.inf)

    h, w = (
        torch.randn(7, 4, generator=gen, dtype=torch.float64),
        torch.randn(9, 4, generator=gen, dtype=torch.float64),
    )
    h_ref = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 4, 5, 8, 8])
    out = []
    for chunk in (None, 3):
        hp, wp = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
        stats = mixed_token_stats(hp, wp, [h_ref], [w], targets, mix, temperature=0.7, chunk_size=chunk)
        (stats.logp.sum() + 0.5 * stats.entropy.sum()).backward()
        out.append((stats.logp.detach(), stats.entropy.detach(), hp.grad, wp.grad))
    for plain, chunked in zip(*out, strict=True):
        assert torch.isfinite(plain).all()
        torch.testing.assert_close(plain, chunked, atol=1e-12, rtol=1e-12)
