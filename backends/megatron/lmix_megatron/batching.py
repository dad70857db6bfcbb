"""From lmix token rows to megatron micro-batches, and back.

lmix rows may be left- or right-padded (positions are ``cumsum(attention_mask) − 1``). Megatron's RoPE uses
``arange(s)`` positions and its attention kernels are causal, so each row is *left-aligned*: its real tokens are
moved to columns ``0 … len−1`` and the tail is padding. Under a causal mask right padding never influences a real
token, so no attention mask is needed, and positions are plain ``arange``.

Only the scored tokens are forwarded through the output layer: token ``(i, c)`` with ``loss_mask[i, c]`` and a
predecessor is predicted by the hidden state of aligned column ``a − 1`` (``a = c − first_i``). :class:`Packed`
keeps the flat index of those hidden states in megatron's ``[s, b]`` order and where each statistic goes back in
the ``[N, S]`` layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import attrs
import torch
from torch import Tensor

from lmix_core.errors import BackendError
from lmix_core.types import MicroBatch, TokenBatch

__all__ = ["Packed", "concat_rows", "gather_rows", "pack", "split_rows", "split_tokens", "unpack"]


@attrs.frozen(kw_only=True)
class Packed:
    """One megatron micro-batch (identical on every rank of a data-parallel replica).

    Attributes:
        input_ids: ``[b, L]`` left-aligned token ids (padding 0).
        h_index: ``[T]`` flat indices into the ``[L·b]`` hidden states (``s``-major) of the scored positions.
        target: ``[T]`` the token each of those positions predicts.
        rows, cols: ``[T]`` where each statistic goes in the original ``[N, S]`` layout (``rows`` ascending).
        shape: the original ``(N, S)``.
        lengths: ``[b]`` real tokens per row.
    """

    input_ids: Tensor
    h_index: Tensor
    target: Tensor
    rows: Tensor
    cols: Tensor
    shape: tuple[int, int]
    lengths: Tensor

    def row_keys(self) -> list[bytes]:
        """A digest of each row's real tokens (identical on every rank; Python's ``hash`` is salted per process)."""
        ids = self.input_ids.cpu()
        return [
            hashlib.blake2b(ids[i, : int(n)].numpy().tobytes(), digest_size=16).digest()
            for i, n in enumerate(self.lengths.tolist())
        ]

    def positions(self) -> Tensor:
        """``[T]`` the aligned column of each scored token's predecessor (``h_index // b``)."""
        return self.h_index // self.num_rows

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])


def pack(tokens: TokenBatch, *, multiple: int = 1) -> Packed:
    """Left-align ``tokens`` and index its scored positions.

    Args:
        tokens: the rows; ``attention_mask`` must be one contiguous run of 1s per row.
        multiple: round the aligned length up to a multiple of this (sequence parallelism needs TP).

    Raises:
        BackendError: a row's attention mask has holes.
    """
    am = tokens.attention_mask.bool()  # [N, S]
    n, s = am.shape
    lengths = am.sum(-1)  # [N]
    cols = torch.arange(s)  # [S]
    first = torch.where(am.any(-1), am.float().argmax(-1), torch.zeros_like(lengths))  # [N]
    contiguous = (am == ((cols[None] >= first[:, None]) & (cols[None] < (first + lengths)[:, None]))).all()
    if not bool(contiguous):
        raise BackendError(
            "the megatron backend needs each row's attention_mask to be one contiguous block of 1s "
            "(left or right padding only)"
        )
    length = max(int(lengths.max()) if n else 1, 1)
    length = -(-length // multiple) * multiple
    a = torch.arange(length)  # [L]
    src = (first[:, None] + a[None]).clamp(max=s - 1)  # [N, L]
    valid = a[None] < lengths[:, None]  # [N, L]
    input_ids = torch.where(valid, tokens.input_ids.gather(1, src), torch.zeros_like(src))  # [N, L]
    scored = tokens.loss_mask.bool() & am & (cols[None] > first[:, None])  # [N, S]
    rows, cs = scored.nonzero(as_tuple=True)  # [T], [T]
    aligned = cs - first[rows]  # [T]
    return Packed(
        input_ids=input_ids.long(),
        h_index=(aligned - 1) * n + rows,
        target=tokens.input_ids[rows, cs].long(),
        rows=rows,
        cols=cs,
        shape=(n, s),
        lengths=lengths.long(),
    )


def gather_rows(per_row: Sequence[Tensor], packed: Packed) -> Tensor:
    """``[T, h]`` hidden states of the scored positions from per-row ``[len_i, h]`` hidden states."""
    pos = packed.positions()  # [T]
    parts = [per_row[i][pos[packed.rows == i].to(per_row[i].device)] for i in range(packed.num_rows)]
    return torch.cat(parts, dim=0)  # [T, h] (rows ascending, as in packed.rows)


def unpack(values: Tensor, packed: Packed) -> Tensor:
    """Scatter ``[T]`` per-token values into a zero ``[N, S]`` float32 tensor (differentiable in ``values``)."""
    out = torch.zeros(packed.shape, dtype=torch.float32, device=values.device)  # [N, S]
    return out.index_put(
        (packed.rows.to(values.device), packed.cols.to(values.device)), values.float()
    )  # [N, S]


def split_rows(batch: MicroBatch, size: int) -> list[MicroBatch]:
    """Split a micro-batch into pieces of at most ``size`` rows (0 keeps it whole).

    Per-row tensors (first dimension ``N``) are split with the rows; the objective's loss is a sum over tokens
    with precomputed ``token_weights``, so the pieces' losses add up to the whole's.
    """
    n = batch.tokens.num_rows
    if size <= 0 or n <= size:
        return [batch]
    out = []
    for start in range(0, n, size):
        rows = slice(start, min(start + size, n))
        tensors = {
            k: (v[rows] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n else v)
            for k, v in batch.tensors.items()
        }
        out.append(attrs.evolve(batch, tokens=batch.tokens.select(rows), tensors=tensors))
    return out


def split_tokens(tokens: TokenBatch, size: int) -> list[TokenBatch]:
    """Split token rows into pieces of at most ``size`` rows."""
    n = tokens.num_rows
    if size <= 0 or n <= size:
        return [tokens]
    return [tokens.select(slice(s, min(s + size, n))) for s in range(0, n, size)]


def concat_rows(parts: Sequence[Tensor]) -> Tensor:
    """Concatenate ``[n_i, S_i]`` pieces row-wise, right-padding the columns with zeros to the widest."""
    width = max(int(p.shape[1]) for p in parts)
    padded = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]
    return torch.cat(padded, dim=0)  # [N, S]
