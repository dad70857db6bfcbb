"""The settings every trainer backend shares: one definition, the same ``[backend]`` keys in each backend.

A backend's Config extends :class:`BackendSettings` with its own fields (``class Config(BackendSettings)``), so
the optimiser, the learning-rate schedule, clipping, log-prob chunking and activation recomputation read the same
in every recipe whatever the backend. The backend reads them from its Config (the schedule's formula: :mod:`lmix_hf.lr_schedule`, which both built-in
backends use).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
from attrs import validators as v

from lmix_core.errors import ConfigError

Schedule = Literal["constant", "cosine", "linear"]


def _betas(instance: Any, attribute: Any, value: tuple[float, float]) -> None:
    if len(value) != 2 or not all(0.0 <= b < 1.0 for b in value):
        raise ValueError(f"'{attribute.name}' must be two numbers in [0, 1) (got {value!r})")


def _decay_span(instance: Any, attribute: Any, value: int) -> None:
    if instance.lr_schedule != "constant" and value <= instance.warmup_steps:
        raise ConfigError(
            f"'total_steps' must exceed 'warmup_steps' ({instance.warmup_steps}) for lr_schedule "
            f"{instance.lr_schedule!r} (got {value})"
        )


@attrs.frozen(kw_only=True)
class BackendSettings:
    """Optimiser, schedule, clipping, chunking and recomputation settings, the same in every backend.

    AdamW with decoupled weight decay on matrices only (not on biases and norm gains: the transformers Trainer's
    convention and megatron's default).

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay (matrices only).
        betas: AdamW ``(β1, β2)``.
        adam_eps: AdamW ε.
        grad_clip: clip the global gradient norm to this, per optimiser state (0 disables clipping).
        lr_schedule: decay after warm-up: ``constant``, ``cosine`` or ``linear``.
        warmup_steps: linear warm-up, in optimiser steps (``train.ppo_epochs × train.minibatches`` per loop step).
        total_steps: optimiser steps the decay spans (required by ``cosine`` and ``linear``); for a run,
            ``train.steps × train.ppo_epochs × train.minibatches``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        micro_batch_size: rows per forward/backward pass (the loop's micro-batches are split by rows; the
            objective's token weights make the pieces add up exactly).
        logprob_chunk_size: scored tokens per chunk of ``[chunk, V]`` logits (recomputed in backward); 0 lets the
            backend choose (``hf``: from the vocabulary size, ``megatron``: 2048).
        recompute: ``full`` recomputes each transformer layer's activations in backward to save memory.
    """

    lr: float = attrs.field(default=1e-5, validator=v.gt(0.0))
    weight_decay: float = attrs.field(default=0.0, validator=v.ge(0.0))
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), validator=_betas)
    adam_eps: float = attrs.field(default=1e-8, validator=v.gt(0.0))
    grad_clip: float = attrs.field(default=1.0, validator=v.ge(0.0))
    lr_schedule: Schedule = attrs.field(default="constant", validator=v.in_(("constant", "cosine", "linear")))
    warmup_steps: int = attrs.field(default=0, validator=v.ge(0))
    total_steps: int = attrs.field(default=0, validator=[v.ge(0), _decay_span])
    min_lr_ratio: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.le(1.0)])
    micro_batch_size: int = attrs.field(default=8, validator=v.ge(1))
    logprob_chunk_size: int = attrs.field(default=0, validator=v.ge(0))
    recompute: Literal["none", "full"] = attrs.field(default="none", validator=v.in_(("none", "full")))


#: Megatron's ``logits_chunk_tokens = 0`` meant "every scored token of a micro-batch in one chunk".
_ONE_CHUNK = 2**31 - 1

#: ``[backend]`` keys of earlier lmix versions, which saved run recipes (``recipe.toml``) still hold: the old key,
#: the key it is now, and how its value reads there.
RENAMED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "gradient_checkpointing": ("recompute", lambda on: {True: "full", False: "none"}.get(on, on)),
    "logits_chunk_tokens": ("logprob_chunk_size", lambda n: _ONE_CHUNK if n == 0 else n),
}


def upgrade_renamed(table: Mapping[str, Any], config_cls: type) -> dict[str, Any]:
    """``table`` with the keys of :data:`RENAMED` under their current names, when ``config_cls`` extends
    :class:`BackendSettings` and has no field of the old name. A key given under both names is left as it is (the
    old one is then reported as unknown)."""
    out = dict(table)
    if not (isinstance(config_cls, type) and issubclass(config_cls, BackendSettings)):
        return out
    fields = {f.name for f in attrs.fields(config_cls)}
    for old, (new, read) in RENAMED.items():
        if old in out and old not in fields and new not in out:
            out[new] = read(out.pop(old))
    return out
