"""How many ``[chunk, V]`` buffers the chunked log-prob kernel holds at once, counted from the CPU allocator.

The profiler reports every allocation and free of torch's CPU allocator in order (``profile_memory=True``); the
running sum of their sizes is the bytes torch holds beyond what existed before, and its maximum over a call is that
call's peak. The kernel's peak is a few ``[c, V]`` float32 buffers (plus ``[N, H]``-sized outputs and gradients,
which these shapes keep below a tenth of a buffer). The lm head is frozen in the counts (as under LoRA): a trainable
one adds its ``[V, H]`` gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from lmix_core.ops.mixed_logprobs import geometric_mix, mixed_token_stats, reference_token_stats

N, H, V, CHUNK = 64, 32, 4096, 16
BUFFER = CHUNK * V * 4  # one [chunk, V] float32 buffer


def _events(nodes: Sequence[Any]) -> Iterator[Any]:
    for node in nodes:
        yield node
        yield from _events(node.children)


def peak_buffers(fn: Callable[[], object]) -> float:
    """Peak of the bytes torch's CPU allocator holds during ``fn()`` beyond those before it, in ``[c, V]`` buffers."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    tree = prof.profiler.kineto_results.experimental_event_tree()
    allocations = sorted(
        (e for e in _events(tree) if e.tag == _EventType.Allocation), key=lambda e: e.start_time_ns
    )
    held = peak = 0
    for event in allocations:
        held += event.extra_fields.alloc_size  # negative for a free
        peak = max(peak, held)
    return peak / BUFFER


def _inputs(train_head: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, H, generator=g).requires_grad_(True)  # [N, H]
    w = (torch.randn(V, H, generator=g) * 0.1).requires_grad_(train_head)  # [V, H]
    h_ref = torch.randn(N, H, generator=g)  # [N, H]
    w_ref = torch.randn(V, H, generator=g) * 0.1  # [V, H]
    targets = torch.randint(0, V, (N,), generator=g)  # [N]
    return h, w, h_ref, w_ref, targets


@pytest.mark.parametrize("entropy", [False, True])
def test_logit_average_holds_three_buffers_forward_and_four_in_backward(entropy: bool) -> None:
    """Forward: policy logits, reference logits, mixed logits (z − max and π reuse the first two). Backward: the
    same three, then log π and π in the two logits buffers, and the gradient w.r.t. the policy logits."""
    h, w, h_ref, w_ref, targets = _inputs()
    mix = functools.partial(geometric_mix, alpha=0.5, ref_weights=[1.0])
    out: list[Any] = []

    def forward() -> None:
        out.append(mixed_token_stats(h, w, [h_ref], [w_ref], targets, mix, chunk_size=CHUNK, entropy=entropy))

    assert 2.9 < peak_buffers(forward) < 3.25
    stats = out[0]
    loss = stats.logp.sum() + (stats.entropy.sum() if stats.entropy is not None else 0.0)
    assert 3.9 < peak_buffers(loss.backward) < 4.25


def test_policy_alone_holds_two_buffers_in_backward() -> None:
    """``mix=None``: the logits' buffer takes π once log π is computed."""
    h, w, _, _, targets = _inputs()
    stats = mixed_token_stats(h, w, [], [], targets, None, chunk_size=CHUNK, entropy=True)
    assert stats.entropy is not None
    loss = stats.logp.sum() + stats.entropy.sum()
    assert 1.9 < peak_buffers(loss.backward) < 2.25


def test_a_mix_that_saves_the_reference_logits_keeps_them() -> None:
    """A ``mix`` whose backward reads the reference logits (``z_θ ⊙ z_ref``) gets them intact: log π goes to a
    buffer of its own, and the gradients equal the full-logits formula's."""

    def product(z_policy: Tensor, z_refs: Sequence[Tensor]) -> Tensor:
        return z_policy * z_refs[0]  # [c, V] saves z_ref for the gradient w.r.t. z_policy

    h, w, h_ref, w_ref, targets = _inputs(train_head=True)
    stats = mixed_token_stats(h, w, [h_ref], [w_ref], targets, product, chunk_size=CHUNK, entropy=True)
    ref = reference_token_stats(h, w, [h_ref], [w_ref], targets, product, entropy=True)
    assert stats.entropy is not None and ref.entropy is not None
    grads = torch.autograd.grad(stats.logp.sum() + stats.entropy.sum(), [h, w])
    expected = torch.autograd.grad(ref.logp.sum() + ref.entropy.sum(), [h, w])
    torch.testing.assert_close(stats.logp, ref.logp, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
