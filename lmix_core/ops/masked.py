"""Masked reductions and whitening over the tokens (or rows) a boolean mask selects.

Every helper returns a defined value on an empty selection (0 for means and variances) instead of NaN, so callers
never need a special case for an empty micro-batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Σ of ``values`` where ``mask`` holds; garbage (even NaN) outside the mask is ignored.

    Args:
        values: any shape.
        mask: bool, same shape.

    Returns:
        0-dim tensor.
    """
    return torch.where(mask, values, torch.zeros_like(values)).sum()  # []


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` holds; 0 when nothing is selected.

    Args:
        values: any shape.
        mask: bool, same shape.

    Returns:
        0-dim tensor.
    """
    count = mask.sum().clamp(min=1)  # []
    return masked_sum(values, mask) / count  # []


def masked_var(values: Tensor, mask: Tensor, *, unbiased: bool = True) -> Tensor:
    """Variance of the selected ``values``.

    ``unbiased`` applies Bessel's correction ``n / (n − 1)`` (verl's ``masked_var`` default); with ``n <= 1`` the
    variance is 0 (verl raises instead).

    Args:
        values: any shape.
        mask: bool, same shape.
        unbiased: divide by ``n − 1`` instead of ``n``.

    Returns:
        0-dim tensor.
    """
    n = mask.sum()  # []
    centred = values - masked_mean(values, mask)  # same as values
    var = masked_mean(centred * centred, mask)  # []
    if unbiased:
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), torch.zeros_like(var))  # []
    return var


def masked_whiten(values: Tensor, mask: Tensor, *, eps: float = 1e-8) -> Tensor:
    """``(x − μ) / sqrt(σ² + eps)`` over the selected entries, 0 elsewhere.

    μ is the masked mean and σ² the masked *unbiased* variance, as in verl's ``masked_whiten`` (used by
    REINFORCE++). The result has masked mean 0 and masked unbiased variance ``σ² / (σ² + eps) ≈ 1``.

    Args:
        values: any shape.
        mask: bool, same shape.
        eps: added to the variance under the square root.

    Returns:
        Tensor shaped like ``values``, 0 outside ``mask``.
    """
    mean = masked_mean(values, mask)  # []
    var = masked_var(values, mask, unbiased=True)  # []
    whitened = (values - mean) * torch.rsqrt(var + eps)  # same as values
    return torch.where(mask, whitened, torch.zeros_like(whitened))  # same as values
