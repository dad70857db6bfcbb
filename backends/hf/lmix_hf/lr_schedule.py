"""The learning rate at an optimiser step: linear warm-up, then a constant, linear or cosine decay.

    lr(s) = lr · (s + 1) / W                                       for s < W (warm-up)
    lr(s) = interpolate(shape, lr, lr · r_min, s − W, S − W)       afterwards

with ``W = warmup_steps``, ``S = total_steps`` and ``r_min = min_lr_ratio`` (``interpolate`` from
:mod:`lmix_core.ops.schedules`: cosine is the half-cosine ``end + (start − end)(1 + cos πp)/2``). Warm-up starts at
``lr/W`` rather than 0 so the first step is not wasted (transformers' ``get_*_schedule_with_warmup`` start at 0).

The schedule is a pure function of the step the loop passes to ``train_step``, so it has no state to checkpoint:
resuming at step ``k`` gives the same learning rate as the uninterrupted run.
"""

from __future__ import annotations

from lmix_core.ops.schedules import Shape, interpolate


def lr_at(
    step: int, *, lr: float, shape: Shape, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> float:
    """The learning rate for optimiser step ``step`` (0-based)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if shape == "constant":
        return lr
    return interpolate(shape, lr, lr * min_lr_ratio, step - warmup_steps, max(total_steps - warmup_steps, 1))
