"""Splitting a :class:`~lmix_core.types.MicroBatch` into row chunks that fit one forward/backward pass.

Splitting is exact because the loop precomputes every token's loss weight for the whole step: the step's loss is
a sum of per-row terms, so summing the chunks' losses (and their gradients) gives the unsplit value. Every tensor
in ``MicroBatch.tensors`` whose first dimension is the number of rows ``N`` is sliced with the rows; any other
tensor (a scalar, a per-question table) is passed whole to every chunk.

Chunks are row slices and may split a group's rollouts; the shared-prompt forward (:mod:`lmix_hf.token_stats`) finds
repeated prompts from the tokens of each chunk, so a split group shares its prompt within each chunk and the result
is the same (a ``micro_batch_size`` that is a multiple of the group size shares the most).
"""

from __future__ import annotations

import attrs
import torch

from lmix_core.types import MicroBatch, TokenBatch


def split_rows(batch: MicroBatch, size: int, device: torch.device) -> list[MicroBatch]:
    """Chunks of at most ``size`` rows (``size <= 0``: one chunk), moved to ``device``."""
    n = batch.tokens.num_rows
    step = n if size <= 0 else size
    out = []
    for start in range(0, max(n, 1), max(step, 1)):
        rows = slice(start, min(start + step, n))
        tokens = batch.tokens.select(rows) if step < n else batch.tokens
        tensors = {
            k: (v[rows] if step < n and v.dim() >= 1 and v.shape[0] == n else v).to(device)
            for k, v in batch.tensors.items()
        }
        out.append(attrs.evolve(batch, tokens=_to(tokens, device), tensors=tensors))
    return out


def _to(tokens: TokenBatch, device: torch.device) -> TokenBatch:
    return attrs.evolve(
        tokens,
        input_ids=tokens.input_ids.to(device),
        attention_mask=tokens.attention_mask.to(device),
        loss_mask=tokens.loss_mask.to(device),
    )
