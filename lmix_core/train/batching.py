"""Token rows built by the loop: SFT demonstration rows, the splitting of a step into micro-batches, and the
counts its loss weights normalise by."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.backend import TrainerBackend
from lmix_core.ops.aggregation import StepCounts
from lmix_core.types import TokenBatch


@attrs.frozen(kw_only=True)
class SFTRows:
    """A minibatch's demonstration rows and the mixer's weight of each.

    Attributes:
        tokens: ``[prompt][demonstration][pad]`` rows (:func:`demonstration_batch`).
        weights: one weight per row.
    """

    tokens: TokenBatch
    weights: tuple[float, ...]


def demonstration_batch(
    prompts: Sequence[Sequence[int]], demos: Sequence[Sequence[int]], pad_id: int
) -> TokenBatch:
    """Right-padded rows ``[prompt][demonstration][pad]`` scored under the policy alone (SFT rows).

    Args:
        prompts: token ids of each chat-templated prompt.
        demos: token ids of each demonstration (EOS included).
        pad_id: padding token id.

    Returns:
        A TokenBatch whose ``loss_mask`` marks the demonstration tokens.
    """
    rows = [list(p) + list(d) for p, d in zip(prompts, demos, strict=True)]
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), pad_id, dtype=torch.long)  # [N, S]
    attn = torch.zeros(len(rows), S, dtype=torch.long)  # [N, S]
    loss_mask = torch.zeros(len(rows), S, dtype=torch.bool)  # [N, S]
    for i, (p, r) in enumerate(zip(prompts, rows)):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, : len(r)] = 1
        loss_mask[i, len(p) : len(r)] = True
    return TokenBatch(input_ids=ids, attention_mask=attn, loss_mask=loss_mask, distribution="policy")


def trim(batch: TokenBatch, tensors: dict[str, Tensor]) -> tuple[TokenBatch, dict[str, Tensor]]:
    """Drop trailing all-padding columns shared by every row (after a row selection)."""
    used = batch.attention_mask.bool().any(0).nonzero()
    if used.numel() == 0:
        return batch, tensors
    S = int(used.max()) + 1
    keep = slice(0, S)
    out = TokenBatch(
        input_ids=batch.input_ids[:, keep],
        attention_mask=batch.attention_mask[:, keep],
        loss_mask=batch.loss_mask[:, keep],
        distribution=batch.distribution,
    )
    return out, {k: (v[:, keep] if v.dim() == 2 else v) for k, v in tensors.items()}


def local_counts(masks: Sequence[Tensor | None]) -> list[StepCounts]:
    """This rank's token and row counts of each ``[n, S]`` loss mask (None: no rows), ``ranks = 1``."""
    empty = StepCounts(tokens=0.0, rows=0.0, all_rows=0.0)
    return [empty if m is None else StepCounts.of(m) for m in masks]


def global_counts(masks: Sequence[Tensor | None], backend: TrainerBackend) -> list[StepCounts]:
    """The counts of each mask summed over the ``W`` data-parallel ranks in one collective (``ranks = W``).

    Args:
        masks: ``[n, S]`` loss masks (None: no rows), the same number on every rank, in the same order.
        backend: sums the counts over ranks (:meth:`TrainerBackend.all_sum`).
    """
    local = local_counts(masks)
    W = backend.world_size
    if W == 1 or not local:
        return local
    summed = backend.all_sum(torch.stack([c.as_tensor() for c in local]))  # [M, 3]
    return [StepCounts.from_tensor(row, ranks=W) for row in summed]
