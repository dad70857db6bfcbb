"""Loss aggregation as precomputed per-token weights.

A policy loss is ``Σ_{i,t} w_{i,t} · ℓ_{i,t}``. Computing the weights once from the *whole step's* response mask
makes the loss of a step equal the sum of its micro-batches' losses exactly, whatever the mode, and whatever the
micro-batch split (verl and TRL instead normalise per micro-batch and rescale by the accumulation count, which is
exact only for equal splits). With ``m`` the mask, ``|o_i| = Σ_t m_{i,t}`` and ``B'`` the number of non-empty
rows (verl's ``agg_loss``; §7 of the algorithm note):

=========================  =====================================  ==================================
mode                       weight ``w_{i,t}``                      loss
=========================  =====================================  ==================================
token-mean                 ``m / Σ_{i,t} m``                      DAPO; TRL ``dapo`` (global tokens)
seq-mean-token-mean        ``m / (|o_i| · B')``                   original GRPO; TRL ``grpo``
seq-mean-token-sum         ``m / B'``                             mean over rows of token sums
seq-mean-token-sum-norm    ``m / L``                              Dr.GRPO, verl convention (no 1/B)
=========================  =====================================  ==================================

``L`` is the constant response-length limit (``max_len``). verl's ``seq-mean-token-sum-norm`` divides the *sum*
over rows by ``L`` and has no ``1/B``; TRL's ``dr_grpo`` divides by ``B · L``. Multiply the weights by ``1/B``
(or set ``max_len = B · L``) to get TRL's. LUFFY/HPT's ``loss_remove_token_mean`` is the same ``Σ m ℓ / L``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lmix_core.errors import LmixError

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = typing.get_args(AggMode)


def _nonempty_rows(m: Tensor) -> Tensor:
    """B' = number of rows with at least one token, at least 1. 0-dim float32."""
    return (m.sum(-1) > 0).sum().clamp(min=1).to(torch.float32)  # []


def _token_mean(m: Tensor, max_len: int) -> Tensor:
    return m / m.sum().clamp(min=1.0)  # [N, S]


def _seq_mean_token_mean(m: Tensor, max_len: int) -> Tensor:
    lengths = m.sum(-1, keepdim=True).clamp(min=1.0)  # [N, 1]
    return m / (lengths * _nonempty_rows(m))  # [N, S]


def _seq_mean_token_sum(m: Tensor, max_len: int) -> Tensor:
    return m / _nonempty_rows(m)  # [N, S]


def _seq_mean_token_sum_norm(m: Tensor, max_len: int) -> Tensor:
    return m / float(max_len)  # [N, S]


_WEIGHTS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregation_weights(mask: Tensor, mode: AggMode, max_len: int) -> Tensor:
    """Per-token weights ``w`` such that ``Σ w · ℓ`` is the ``mode`` aggregate of ``ℓ`` over ``mask``.

    Args:
        mask: ``[N, S]`` bool (or 0/1) response tokens of every RL row of the step.
        mode: one of :data:`AGG_MODES`.
        max_len: ``L`` of ``seq-mean-token-sum-norm`` (the response length limit); must be >= 1.

    Returns:
        ``[N, S]`` float32, 0 outside ``mask``; all zeros for an empty mask.

    Raises:
        LmixError: on an unknown mode, a mask that is not 2-D, or ``max_len < 1``.
    """
    fn = _WEIGHTS.get(mode)
    if fn is None:
        raise LmixError(f"'agg' must be one of {', '.join(repr(m) for m in AGG_MODES)} (got {mode!r})")
    if mask.ndim != 2:
        raise LmixError(f"aggregation mask must be 2-D [N, S] (got shape {tuple(mask.shape)})")
    if int(max_len) < 1:
        raise LmixError(f"'max_len' must be >= 1 (got {max_len!r})")
    m = (mask != 0).to(torch.float32)  # [N, S]
    return fn(m, int(max_len))  # [N, S]
