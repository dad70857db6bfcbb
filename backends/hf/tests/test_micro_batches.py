"""Row splitting of micro-batches."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.types import MicroBatch, TokenBatch
from lmix_hf.micro_batches import split_rows


@given(st.integers(1, 9), st.integers(1, 5), st.integers(1, 4))
def test_chunks_concatenate_to_the_batch(n, s, size):
    """Chunks hold at most ``size`` rows, concatenate back to every per-row tensor, and pass other tensors whole."""
    ids = torch.arange(n * s).reshape(n, s)
    batch = MicroBatch(
        tokens=TokenBatch(
            input_ids=ids, attention_mask=torch.ones(n, s, dtype=torch.long), loss_mask=ids % 2 == 0
        ),
        role="rl",
        tensors={
            "per_row": ids.float(),
            "seq": torch.arange(n),
            "scalar": torch.tensor(3.0),
            "table": torch.ones(n + 1),
        },
    )
    chunks = split_rows(batch, size, torch.device("cpu"))
    assert len(chunks) == -(-n // size) and all(c.tokens.num_rows <= size for c in chunks)
    torch.testing.assert_close(torch.cat([c.tokens.input_ids for c in chunks]), ids, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([c.tokens.loss_mask for c in chunks]), ids % 2 == 0, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([c.tensors["per_row"] for c in chunks]), ids.float(), rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([c.tensors["seq"] for c in chunks]), torch.arange(n), rtol=0, atol=0)
    assert all(c.tensors["scalar"].item() == 3.0 and c.tensors["table"].shape == (n + 1,) for c in chunks)
    assert all(c.role == "rl" for c in chunks)
