"""Positions, 4-D masks and the preallocated KV buffer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_hf.kv_cache import KVBuffer
from lmix_hf.masks import as_kind, causal_mask, position_ids


def test_position_ids_example():
    """Positions count real tokens from 0 whatever the padding side; padding gets 0."""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]])
    torch.testing.assert_close(position_ids(mask), expected, rtol=0, atol=0)


def test_causal_mask_example():
    """Row [pad, a, b]: pad attends only itself; a attends a; b attends a and b (hand-written)."""
    allowed = causal_mask(torch.tensor([[0, 1, 1]]), "bool", torch.float32)
    expected = torch.tensor([[[[True, False, False], [False, True, False], [False, True, True]]]])
    torch.testing.assert_close(allowed, expected, rtol=0, atol=0)
    additive = causal_mask(torch.tensor([[0, 1, 1]]), "additive", torch.float32)
    neg = torch.finfo(torch.float32).min
    torch.testing.assert_close(additive[0, 0, 2], torch.tensor([neg, 0.0, 0.0]), rtol=0, atol=0)


@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.integers(0, 3), st.booleans())
def test_masks_agree_between_padding_sides(lengths, extra, left):
    """For any row lengths and padding side, each real query attends exactly the real keys at or before it, and
    every query row has at least one allowed key (no fully masked softmax)."""
    width = max(lengths) + extra
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, width - n :] = 1
        else:
            mask[i, :n] = 1
    allowed = causal_mask(mask, "bool", torch.float32)[:, 0]  # [N, S, S]
    pos = position_ids(mask)
    assert allowed.any(-1).all()
    for i in range(len(lengths)):
        real = mask[i].bool()
        sub = allowed[i][real][:, real]  # real queries × real keys
        torch.testing.assert_close(sub, torch.ones_like(sub).tril(), rtol=0, atol=0)
        assert not allowed[i][real][:, ~real].any()
        torch.testing.assert_close(pos[i][real], torch.arange(int(real.sum())), rtol=0, atol=0)


def test_as_kind_keeps_bool_and_makes_additive():
    """``bool`` returns the mask itself; ``additive`` gives 0 where allowed and the dtype minimum elsewhere."""
    allowed = torch.tensor([True, False])
    assert as_kind(allowed, "bool", torch.float32) is allowed
    out = as_kind(allowed, "additive", torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out[0] == 0 and out[1] == torch.finfo(torch.bfloat16).min


def test_kv_buffer_writes_in_place_and_returns_filled_views():
    """Each update writes at the current length and returns everything filled so far; overflow is an error."""
    buf = KVBuffer(4)
    k1, v1 = torch.ones(1, 2, 3, 5), torch.full((1, 2, 3, 5), 2.0)
    k, v = buf.update(k1, v1, 0)
    assert k.shape == (1, 2, 3, 5) and torch.equal(v, v1)
    buf.advance(3)
    k, v = buf.update(torch.zeros(1, 2, 1, 5), torch.zeros(1, 2, 1, 5), 0)
    assert k.shape == (1, 2, 4, 5)
    torch.testing.assert_close(k[:, :, :3], k1, rtol=0, atol=0)
    assert (k[:, :, 3] == 0).all()
    buf.advance(1)
    with pytest.raises(ValueError, match="holds 4 positions"):
        buf.update(torch.zeros(1, 2, 1, 5), torch.zeros(1, 2, 1, 5), 0)
