"""``weighted``: the scheduled geometric mixture with K references on the simplex."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lmix_core import registries
from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.combiners.weighted import Weighted
from lmix_core.config import build
from lmix_core.errors import BackendError, ConfigError
from lmix_core.testing.combiner import check_combiner

ATOL = 1e-9
RTOL = 1e-9


@st.composite
def simplex(draw, k=None):
    """Weights ``w ∈ Δ^{K−1}`` (K from 1 to 4), as a tuple of floats summing to 1."""
    k = draw(st.integers(1, 4)) if k is None else k
    raw = draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k))
    total = sum(raw)
    if total <= 1e-6:
        return tuple(1.0 / k for _ in range(k))
    w = [x / total for x in raw]
    w[-1] = 1.0 - sum(w[:-1])  # exact sum for the validator
    return tuple(max(x, 0.0) for x in w)


@st.composite
def problems(draw):
    """Reference weights, α, and float64 logits ``[R, V]`` for the policy and each reference."""
    w = draw(simplex())
    rows, vocab = draw(st.integers(1, 4)), draw(st.integers(2, 7))
    elems = st.floats(-20.0, 20.0, allow_nan=False, allow_infinity=False)
    zs = [
        torch.from_numpy(draw(arrays(np.float64, (rows, vocab), elements=elems))) for _ in range(1 + len(w))
    ]
    alpha = draw(st.floats(0.0, 1.0))
    return w, alpha, zs[0], zs[1:]


def constant(alpha, ref_weights):
    return Weighted(Weighted.Config(alpha_start=alpha, ref_weights=ref_weights))


def test_registered_and_defaults_equal_logit_average():
    """Registered as ``weighted``; its defaults (α = 0.5 constant, one reference) are ``logit_average``'s."""
    assert registries.combiners.get("weighted") is Weighted
    z_pol, z_ref = torch.randn(3, 6), torch.randn(3, 6)
    default = Weighted.default()
    assert default.num_references == 1 and default.deploy == "combined" and default.needs_entropy is False
    for step in (0, 10, 10**6):
        torch.testing.assert_close(
            default.mix_logits(z_pol, [z_ref], step=step),
            LogitAverage.default().mix_logits(z_pol, [z_ref]),
            atol=0.0,
            rtol=0.0,
        )


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_schedule_endpoints_and_holding(shape):
    """α starts at ``alpha_start``, reaches ``alpha_end`` at ``schedule_steps`` and stays there."""
    w = Weighted(Weighted.Config(alpha_start=0.9, alpha_end=0.2, schedule=shape, schedule_steps=10))
    assert w.alpha(0) == pytest.approx(0.9, abs=1e-12)
    assert w.alpha(10) == pytest.approx(0.2, abs=1e-12)
    assert w.alpha(1000) == pytest.approx(0.2, abs=1e-12)
    # midpoint: linear 0.9 + (0.2 − 0.9)·½ = 0.55; cosine 0.2 + 0.7·(1 + cos(π/2))/2 = 0.55 as well
    assert w.alpha(5) == pytest.approx(0.55, abs=1e-12)


def test_cosine_quarter_point_by_hand():
    """Cosine at p = ¼: 0.2 + 0.7·(1 + cos(π/4))/2 = 0.2 + 0.35·(1 + √2/2) ≈ 0.797487."""
    w = Weighted(Weighted.Config(alpha_start=0.9, alpha_end=0.2, schedule="cosine", schedule_steps=8))
    assert w.alpha(2) == pytest.approx(0.2 + 0.35 * (1 + math.sqrt(2) / 2), abs=1e-12)


@given(
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.sampled_from(["linear", "cosine"]),
    st.integers(1, 50),
    st.integers(0, 60),
)
def test_schedule_is_monotone_between_its_ends(start, end, shape, steps, step):
    """α_t moves monotonically from start to end and stays within [min, max]."""
    w = Weighted(Weighted.Config(alpha_start=start, alpha_end=end, schedule=shape, schedule_steps=steps))
    a, b = w.alpha(step), w.alpha(step + 1)
    assert min(start, end) - 1e-12 <= a <= max(start, end) + 1e-12
    assert (b - a) * (end - start) >= -1e-12


def test_constant_schedule_ignores_alpha_end():
    """``constant`` keeps ``alpha_start`` at every step."""
    w = Weighted(Weighted.Config(alpha_start=0.3, alpha_end=0.9, schedule="constant", schedule_steps=5))
    assert [w.alpha(s) for s in (0, 3, 5, 100)] == [0.3, 0.3, 0.3, 0.3]


@given(problems())
def test_mixture_is_the_weighted_geometric_mean(problem):
    """π_mix = π_θ^α Π_k π_k^{(1−α) w_k} / Z."""
    w, alpha, z_pol, z_refs = problem
    out = constant(alpha, w).mix_logits(z_pol, z_refs)
    log_geo = alpha * torch.log_softmax(z_pol, -1)  # [R, V]
    for w_k, z_k in zip(w, z_refs):
        log_geo = log_geo + (1 - alpha) * w_k * torch.log_softmax(z_k, -1)  # [R, V]
    torch.testing.assert_close(torch.softmax(out, -1), torch.softmax(log_geo, -1), atol=ATOL, rtol=RTOL)


@given(problems())
def test_copies_of_one_model_combine_to_that_model(problem):
    """When the policy and every reference share logits, the mix is that distribution."""
    w, alpha, z_pol, z_refs = problem
    out = constant(alpha, w).mix_logits(z_pol, [z_pol.clone() for _ in z_refs])
    torch.testing.assert_close(torch.softmax(out, -1), torch.softmax(z_pol, -1), atol=ATOL, rtol=RTOL)


@given(problems())
def test_log_mix_is_at_least_the_weighted_log_probs(problem):
    """log π_mix ≥ α log π_θ + (1−α) Σ w_k log π_k everywhere (log Z ≤ 0 by Hölder)."""
    w, alpha, z_pol, z_refs = problem
    log_mix = torch.log_softmax(constant(alpha, w).mix_logits(z_pol, z_refs), -1)  # [R, V]
    bound = alpha * torch.log_softmax(z_pol, -1)  # [R, V]
    for w_k, z_k in zip(w, z_refs):
        bound = bound + (1 - alpha) * w_k * torch.log_softmax(z_k, -1)  # [R, V]
    assert bool((log_mix >= bound - 1e-9).all())


@given(problems(), st.randoms())
def test_permuting_references_with_their_weights_changes_nothing(problem, rnd):
    """The references are an unordered set of (weight, model) pairs."""
    w, alpha, z_pol, z_refs = problem
    order = list(range(len(w)))
    rnd.shuffle(order)
    w2 = tuple(
        w[i] for i in order
    )  # a permutation of a valid simplex is one (the sum check has a 1e-6 tolerance)
    a = constant(alpha, w).mix_logits(z_pol, z_refs)
    b = constant(alpha, w2).mix_logits(z_pol, [z_refs[i] for i in order])
    torch.testing.assert_close(torch.softmax(b, -1), torch.softmax(a, -1), atol=1e-9, rtol=1e-9)


@given(problems(), st.data())
def test_one_hot_weights_at_alpha_zero_select_that_reference(problem, data):
    """With α = 0 and w = e_j the mix is reference j."""
    w, _, z_pol, z_refs = problem
    j = data.draw(st.integers(0, len(w) - 1))
    one_hot = tuple(1.0 if i == j else 0.0 for i in range(len(w)))
    out = constant(0.0, one_hot).mix_logits(z_pol, z_refs)
    torch.testing.assert_close(torch.softmax(out, -1), torch.softmax(z_refs[j], -1), atol=ATOL, rtol=RTOL)


@given(problems(), st.integers(0, 20), st.data())
def test_gradient_is_alpha_t_times_e_a_minus_pi(problem, step, data):
    """∂ log π_mix(a)/∂z_θ = α_t (e_a − π_mix) at a scheduled step; references get no gradient."""
    w, _, z_pol, z_refs = problem
    comb = Weighted(
        Weighted.Config(alpha_start=0.8, alpha_end=0.1, schedule="cosine", schedule_steps=10, ref_weights=w)
    )
    z_pol = z_pol.clone().requires_grad_(True)
    z_refs = [z.clone().requires_grad_(True) for z in z_refs]
    rows, vocab = z_pol.shape
    a = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=rows, max_size=rows)))
    torch.log_softmax(comb.mix_logits(z_pol, z_refs, step=step), -1).gather(-1, a[:, None]).sum().backward()
    pi = torch.softmax(comb.mix_logits(z_pol.detach(), [z.detach() for z in z_refs], step=step), -1)  # [R, V]
    expected = comb.alpha(step) * (torch.nn.functional.one_hot(a, vocab).double() - pi)  # [R, V]
    torch.testing.assert_close(z_pol.grad, expected, atol=ATOL, rtol=RTOL)
    assert all(z.grad is None for z in z_refs)


def test_config_validation():
    """Reference weights must be a non-empty simplex of numbers; α within [0, 1]; steps >= 0."""
    assert build(Weighted.Config, {"ref_weights": [0.25, 0.75]}).ref_weights == (0.25, 0.75)
    assert build(Weighted.Config, {"ref_weights": [1]}).ref_weights == (1.0,)
    for table, match in [
        ({"ref_weights": [0.5, 0.6]}, "'ref_weights' must sum to 1"),
        ({"ref_weights": [1.5, -0.5]}, "'ref_weights' must hold finite weights >= 0"),
        ({"ref_weights": []}, "'ref_weights' must name at least one reference weight"),
        ({"ref_weights": ["a"]}, "ref_weights"),
        ({"alpha_start": 2.0}, "'alpha_start' must be <= 1"),
        ({"alpha_end": -1.0}, "'alpha_end' must be >= 0"),
        ({"schedule_steps": -3}, "'schedule_steps' must be >= 0"),
        ({"schedule": "step"}, "schedule"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build(Weighted.Config, table)


def test_number_of_references_follows_the_weights():
    """``num_references`` is ``len(ref_weights)``, and passing another count is a backend error."""
    comb = Weighted(Weighted.Config(ref_weights=(0.2, 0.3, 0.5)))
    assert comb.num_references == 3
    with pytest.raises(BackendError, match="takes 3 reference logits tensors"):
        comb.mix_logits(torch.zeros(1, 4), [torch.zeros(1, 4)])


@pytest.mark.parametrize(
    "config",
    [
        {},
        {
            "ref_weights": (0.2, 0.8),
            "alpha_start": 0.0,
            "alpha_end": 1.0,
            "schedule": "cosine",
            "schedule_steps": 9,
        },
        {"ref_weights": (0.5, 0.0, 0.5), "alpha_start": 1.0, "alpha_end": 0.0, "schedule": "linear"},
    ],
)
def test_passes_the_combiner_contract(config):
    """``weighted`` satisfies ``check_combiner`` with several references and schedules."""
    check_combiner(Weighted(Weighted.Config(**config)))
