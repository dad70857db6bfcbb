"""Masked reductions and whitening over the tokens (or rows) a boolean mask selects.

Every helper returns a defined value on an empty selection (0 for means and variances) instead of NaN, so callers
never need a special case for an empty micro-batch.

Means, variances and whitening take an optional ``all_sum`` (``AdvantageInputs.all_sum``, a backend's
``all_sum``): with it, the statistics are those of the selection on every data-parallel rank together, computed
from counts and sums reduced over ranks (every rank must then make the same calls).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: Elementwise sum over data-parallel ranks of a CPU float64 tensor of the same shape on every rank.
AllSum = Callable[[Tensor], Tensor]


def global_sums(all_sum: AllSum | None, *values: Tensor) -> list[Tensor]:
    """The 0-dim ``values`` summed over ranks in one ``all_sum`` call, each in its own dtype (the values themselves
    when ``all_sum`` is None).

    Counts survive the float64 round trip exactly (up to 2⁵³).
    """
    if all_sum is None:
        return list(values)
    packed = torch.stack([v.detach().to("cpu", torch.float64) for v in values])  # [K]
    summed = all_sum(packed)  # [K]
    return [s.to(v.device, v.dtype) for s, v in zip(summed.unbind(), values)]


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Σ of ``values`` where ``mask`` holds; garbage (even NaN) outside the mask is ignored.

    Args:
        values: any shape.
        mask: bool, same shape.

    Returns:
        0-dim tensor.
    """
    return torch.where(mask, values, torch.zeros_like(values)).sum()  # []


def masked_mean(values: Tensor, mask: Tensor, *, all_sum: AllSum | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` holds; 0 when nothing is selected.

    Args:
        values: any shape.
        mask: bool, same shape.
        all_sum: sum over data-parallel ranks (the mean of every rank's selection); None: this one only.

    Returns:
        0-dim tensor.
    """
    total, count = global_sums(all_sum, masked_sum(values, mask), mask.sum())  # [], []
    return total / count.clamp(min=1)  # []


def masked_var(
    values: Tensor, mask: Tensor, *, unbiased: bool = True, all_sum: AllSum | None = None
) -> Tensor:
    """Variance of the selected ``values``.

    ``unbiased`` applies Bessel's correction ``n / (n − 1)`` (verl's ``masked_var`` default); with ``n <= 1`` the
    variance is 0 (verl raises instead).

    Args:
        values: any shape.
        mask: bool, same shape.
        unbiased: divide by ``n − 1`` instead of ``n``.
        all_sum: sum over data-parallel ranks (the variance of every rank's selection); None: this one only.

    Returns:
        0-dim tensor.
    """
    (n,) = global_sums(all_sum, mask.sum())  # []
    centred = values - masked_mean(values, mask, all_sum=all_sum)  # same as values
    var = masked_mean(centred * centred, mask, all_sum=all_sum)  # []
    if unbiased:
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), torch.zeros_like(var))  # []
    return var


def masked_whiten(
    values: Tensor, mask: Tensor, *, eps: float = 1e-8, all_sum: AllSum | None = None
) -> Tensor:
    """``(x − μ) / sqrt(σ² + eps)`` over the selected entries, 0 elsewhere.

    μ is the masked mean and σ² the masked *unbiased* variance, as in verl's ``masked_whiten`` (used by
    REINFORCE++). The result has masked mean 0 and masked unbiased variance ``σ² / (σ² + eps) ≈ 1``.

    Args:
        values: any shape.
        mask: bool, same shape.
        eps: added to the variance under the square root.
        all_sum: sum over data-parallel ranks (μ and σ² of every rank's selection); None: this one only.

    Returns:
        Tensor shaped like ``values``, 0 outside ``mask``.
    """
    mean = masked_mean(values, mask, all_sum=all_sum)  # []
    var = masked_var(values, mask, unbiased=True, all_sum=all_sum)  # []
    whitened = (values - mean) * torch.rsqrt(var + eps)  # same as values
    return torch.where(mask, whitened, torch.zeros_like(whitened))  # same as values
