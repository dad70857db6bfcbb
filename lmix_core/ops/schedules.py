"""Scalar schedules over training progress, shared by scheduled components.

Each maps a step to a value between ``start`` and ``end`` over ``steps`` steps and holds ``end`` afterwards.
"""

from __future__ import annotations

import math
from typing import Literal

Shape = Literal["constant", "linear", "cosine"]


def progress(step: int, steps: int) -> float:
    """Fraction of ``steps`` done at ``step``, clamped to [0, 1] (0 steps means done)."""
    if steps <= 0:
        return 1.0
    return min(max(step / steps, 0.0), 1.0)


def interpolate(shape: Shape, start: float, end: float, step: int, steps: int) -> float:
    """Value at ``step``: ``start`` at step 0, ``end`` from ``steps`` on.

    ``constant`` stays at ``start``; ``linear`` moves at a constant rate; ``cosine`` follows
    ``end + (start - end) · (1 + cos(π·p)) / 2``, the half-cosine used by Prefix-RFT's prefix schedule.
    """
    if shape == "constant":
        return start
    p = progress(step, steps)
    if shape == "linear":
        return start + (end - start) * p
    if shape == "cosine":
        return end + (start - end) * (1.0 + math.cos(math.pi * p)) / 2.0
    raise ValueError(f"'shape' must be one of 'constant', 'linear', 'cosine' (got {shape!r})")
