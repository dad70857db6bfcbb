"""A preallocated key/value cache for incremental decoding with transformers decoder layers.

transformers' ``DynamicCache`` grows each layer's keys and values with ``torch.cat`` at every step, which copies
the whole cache per token. :class:`KVBuffer` allocates ``[B, H_kv, S_max, D]`` once per layer (on the first
``update``) and writes each step's keys and values in place; attention reads a view of the filled part.

It implements the one method transformers' attention layers call on ``past_key_values``,
``update(key_states, value_states, layer_idx)``. The caller passes ready-made 4-D masks and explicit position ids,
so nothing else of the ``Cache`` API is used. The caller advances :attr:`length` after each forward pass (every
layer writes at the same offset within one pass).
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVBuffer:
    """Keys and values of every layer for ``max_length`` positions, filled left to right.

    Args:
        max_length: the longest sequence the buffer holds (prompt plus new tokens).
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.length = 0
        self._keys: dict[int, Tensor] = {}
        self._values: dict[int, Tensor] = {}

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[Tensor, Tensor]:
        """Store ``[B, H_kv, q, D]`` keys/values at positions ``length … length+q-1``; return the filled views."""
        start, stop = self.length, self.length + key_states.shape[-2]
        if stop > self.max_length:
            raise ValueError(f"KVBuffer holds {self.max_length} positions; a write would reach {stop}")
        keys = self._keys.get(layer_idx)
        if keys is None:
            B, H, _, D = key_states.shape
            keys = key_states.new_empty(B, H, self.max_length, D)  # [B, H_kv, S_max, D]
            self._keys[layer_idx] = keys
            self._values[layer_idx] = value_states.new_empty(B, H, self.max_length, value_states.shape[-1])
        values = self._values[layer_idx]
        keys[:, :, start:stop] = key_states
        values[:, :, start:stop] = value_states
        return keys[:, :, :stop], values[:, :, :stop]  # [B, H_kv, stop, D], [B, H_kv, stop, D]

    @classmethod
    def concat(cls, buffers: list[KVBuffer]) -> KVBuffer:
        """One buffer holding ``buffers``' rows one after the other (model-major), at their common length."""
        if len(buffers) == 1:
            return buffers[0]
        if len({(b.max_length, b.length) for b in buffers}) != 1:
            raise ValueError("KVBuffer.concat needs buffers of the same length and capacity")
        out = cls(buffers[0].max_length)
        out.length = buffers[0].length
        for i in buffers[0]._keys:
            out._keys[i] = torch.cat([b._keys[i] for b in buffers])  # [K·B, H_kv, S_max, D]
            out._values[i] = torch.cat([b._values[i] for b in buffers])  # [K·B, H_kv, S_max, D]
        return out

    def select_rows(self, index: Tensor) -> None:
        """Replace the rows by ``index``'s rows (``[B']`` row numbers, repeats allowed), e.g. a prompt's keys and
        values computed once and shared by every rollout of its group."""
        for i in self._keys:
            self._keys[i] = self._keys[i].index_select(0, index)  # [B', H_kv, S_max, D]
            self._values[i] = self._values[i].index_select(0, index)  # [B', H_kv, S_max, D]

    def advance(self, steps: int) -> None:
        """Mark ``steps`` more positions as filled (after a forward pass over ``steps`` tokens)."""
        self.length += steps
