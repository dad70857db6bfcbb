"""Loss aggregation as precomputed per-token weights.

A policy loss is ``Σ_{i,t} w_{i,t} · ℓ_{i,t}``. Computing the weights once from the *whole step's* response mask
makes the loss of a step equal the sum of its micro-batches' losses exactly, whatever the mode, and whatever the
micro-batch split (verl and TRL instead normalise per micro-batch and rescale by the accumulation count, which is
exact only for equal splits). With ``m`` the mask, ``|o_i| = Σ_t m_{i,t}``, ``T = Σ_{i,t} m_{i,t}``, ``L`` the
constant response-length limit (``max_len``) and ``R`` the row count chosen by ``rows``:

=========================  ==========================  =====================================================
mode                       weight ``w_{i,t}``           reproduces
=========================  ==========================  =====================================================
token-mean                 ``m / T``                    DAPO; verl 0.9.1 ``token-mean``; TRL 1.16 ``dapo``
token-sum                  ``m``                        verl 0.9.1 ``token-sum``
seq-mean-token-mean        ``m / (|o_i| · R)``          original GRPO; verl 0.9.1; TRL 1.16 ``grpo`` (R = B)
seq-mean-token-sum         ``m / R``                    verl 0.9.1; TRL 1.16 ``luspo`` aggregation (R = B)
seq-mean-token-sum-norm    ``m / (R · L)``              Dr. GRPO; verl 0.9.1; TRL 1.16 ``dr_grpo`` (R = B)
token-sum-norm             ``m / L``                    verl before the 1/R (LUFFY's and HPT's forks)
=========================  ==========================  =====================================================

``rows`` picks ``R``: ``"nonempty"`` is ``B'``, the rows with at least one token (verl 0.9.1's ``agg_loss`` when
it counts the batch itself), ``"all"`` is ``B``, every row, an empty one counting 0 (TRL 1.16's ``.mean()`` over
rows and ``per_token_loss.size(0)``; verl 0.9.1's trainer, which passes ``global_batch_size``, the mini-batch's
row count). The two differ only when a row has no loss token. verl 0.9.1 takes ``L`` from its
``loss_scale_factor``, or else the padded width of the micro-batch; TRL 1.16 takes ``max_completion_length``.

LUFFY's and HPT's released trainers (verl forks) compute ``Σ m ℓ / L`` per micro-batch (``loss_remove_token_mean``),
divide each micro-batch's loss by the rank's gradient-accumulation steps (``loss = policy_loss /
self.gradient_accumulation``) and average gradients over the ``W`` ranks, so their step loss is ``Σ m ℓ / (K · L)``
with ``K`` the number of micro-batches per optimiser step over all ranks (global mini-batch rows / micro-batch
rows): ``token-sum-norm`` with ``max_len = K · L`` reproduces it.

**Data parallelism.** Weights computed on one rank from that rank's mask normalise by that rank's counts, and
backends then *average* the gradients over the ``W`` ranks, so unequal ranks do not give the gradient of the
global batch. Pass ``counts``, the :class:`StepCounts` summed over all ranks: every count above is then the global
one and every weight is multiplied by ``W``, so the rank-averaged gradient equals the one-process gradient of the
global batch (verl 0.9.1's ``global_batch_info``: global token and row counts times ``dp_size``).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Literal

import attrs
import torch
from torch import Tensor

from lmix_core.errors import LmixError

AggMode = Literal[
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "token-sum-norm",
]
AGG_MODES: tuple[str, ...] = typing.get_args(AggMode)

#: Which rows the ``seq-mean-*`` modes average over: ``B'`` non-empty rows, or all ``B`` rows.
AggRows = Literal["nonempty", "all"]
AGG_ROWS: tuple[str, ...] = typing.get_args(AggRows)


@attrs.frozen
class StepCounts:
    """The counts a step's aggregation normalises by, over every data-parallel rank.

    ``StepCounts.of(mask)`` counts one rank's mask (``ranks = 1``); adding the counts of different ranks sums the
    counts and the ranks, so ``StepCounts.of(m_0) + … + StepCounts.of(m_{W−1})`` has ``ranks = W``. Across
    processes, all-reduce :meth:`as_tensor` with SUM and rebuild with :meth:`from_tensor` and ``ranks = W``.

    Attributes:
        tokens: ``Σ m`` over the whole step, all ranks.
        rows: ``B'``, rows with at least one token, all ranks.
        all_rows: ``B``, every row (empty ones included), all ranks.
        ranks: the data-parallel world size ``W``; backends average gradients over ``W`` ranks, so weights are
            multiplied by ``W``.
    """

    tokens: float = attrs.field(converter=float, validator=attrs.validators.ge(0.0))
    rows: float = attrs.field(converter=float, validator=attrs.validators.ge(0.0))
    all_rows: float = attrs.field(converter=float, validator=attrs.validators.ge(0.0))
    ranks: int = attrs.field(default=1, converter=int, validator=attrs.validators.ge(1))

    def __attrs_post_init__(self) -> None:
        if self.rows > self.all_rows:
            raise ValueError(f"'rows' must be <= 'all_rows' (got {self.rows!r} > {self.all_rows!r})")

    @classmethod
    def of(cls, mask: Tensor) -> StepCounts:
        """The local counts of one rank's ``[N, S]`` mask (``ranks = 1``)."""
        if mask.ndim != 2:
            raise LmixError(f"aggregation mask must be 2-D [N, S] (got shape {tuple(mask.shape)})")
        lengths = (mask != 0).sum(-1)  # [N]
        return cls(
            tokens=float(lengths.sum()), rows=float((lengths > 0).sum()), all_rows=float(mask.shape[0])
        )

    def __add__(self, other: StepCounts) -> StepCounts:
        """Counts of two disjoint sets of ranks together."""
        if not isinstance(other, StepCounts):
            return NotImplemented
        return StepCounts(
            tokens=self.tokens + other.tokens,
            rows=self.rows + other.rows,
            all_rows=self.all_rows + other.all_rows,
            ranks=self.ranks + other.ranks,
        )

    def as_tensor(self) -> Tensor:
        """``[tokens, rows, all_rows]`` as float64 ``[3]``, for an all-reduce with SUM."""
        return torch.tensor([self.tokens, self.rows, self.all_rows], dtype=torch.float64)  # [3]

    @classmethod
    def from_tensor(cls, counts: Tensor, *, ranks: int) -> StepCounts:
        """Rebuild from an all-reduced :meth:`as_tensor` over ``ranks`` ranks."""
        tokens, rows, all_rows = (float(v) for v in counts.detach().to("cpu", torch.float64).reshape(3))
        return cls(tokens=tokens, rows=rows, all_rows=all_rows, ranks=ranks)


def _row_count(c: StepCounts, rows: AggRows) -> float:
    """R: B' or B, at least 1."""
    return max(c.rows if rows == "nonempty" else c.all_rows, 1.0)


def _token_mean(m: Tensor, max_len: int, c: StepCounts, rows: AggRows) -> Tensor:
    return m / max(c.tokens, 1.0)  # [N, S]


def _token_sum(m: Tensor, max_len: int, c: StepCounts, rows: AggRows) -> Tensor:
    return m  # [N, S]


def _seq_mean_token_mean(m: Tensor, max_len: int, c: StepCounts, rows: AggRows) -> Tensor:
    lengths = m.sum(-1, keepdim=True).clamp(min=1.0)  # [N, 1]
    return m / (lengths * _row_count(c, rows))  # [N, S]


def _seq_mean_token_sum(m: Tensor, max_len: int, c: StepCounts, rows: AggRows) -> Tensor:
    return m / _row_count(c, rows)  # [N, S]


def _seq_mean_token_sum_norm(m: Tensor, max_len: int, c: StepCounts, rows: AggRows) -> Tensor:
    return m / (_row_count(c, rows) * float(max_len))  # [N, S]


def _token_sum_norm(m: Tensor, max_len: int, c: StepCounts, rows: AggRows) -> Tensor:
    return m / float(max_len)  # [N, S]


_WEIGHTS: dict[str, Callable[[Tensor, int, StepCounts, AggRows], Tensor]] = {
    "token-mean": _token_mean,
    "token-sum": _token_sum,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
    "token-sum-norm": _token_sum_norm,
}


def aggregation_weights(
    mask: Tensor,
    mode: AggMode,
    max_len: int,
    counts: StepCounts | None = None,
    *,
    rows: AggRows = "nonempty",
) -> Tensor:
    """Per-token weights ``w`` such that ``Σ w · ℓ`` is the ``mode`` aggregate of ``ℓ`` over ``mask``.

    Args:
        mask: ``[N, S]`` bool (or 0/1) response tokens of the step's RL rows on this rank.
        mode: one of :data:`AGG_MODES`.
        max_len: ``L`` of the ``*-norm`` modes (the response length limit); must be >= 1.
        counts: the step's counts over all data-parallel ranks, or None for this mask's own
            (``StepCounts.of(mask)``). With counts, weights use the global counts and are multiplied by
            ``counts.ranks``, so that the gradient averaged over ranks is that of the global batch.
        rows: ``R`` of the ``seq-mean-*`` modes: ``"nonempty"`` (B') or ``"all"`` (B).

    Returns:
        ``[N, S]`` float32, 0 outside ``mask``; all zeros for an empty mask.

    Raises:
        LmixError: on an unknown mode or rows, a mask that is not 2-D, ``max_len < 1``, or ``counts`` smaller than
            the mask's own counts.
    """
    fn = _WEIGHTS.get(mode)
    if fn is None:
        raise LmixError(f"'agg' must be one of {', '.join(repr(m) for m in AGG_MODES)} (got {mode!r})")
    if rows not in AGG_ROWS:
        raise LmixError(f"'agg_rows' must be one of {', '.join(repr(r) for r in AGG_ROWS)} (got {rows!r})")
    if mask.ndim != 2:
        raise LmixError(f"aggregation mask must be 2-D [N, S] (got shape {tuple(mask.shape)})")
    if int(max_len) < 1:
        raise LmixError(f"'max_len' must be >= 1 (got {max_len!r})")
    m = (mask != 0).to(torch.float32)  # [N, S]
    local = StepCounts.of(mask)
    if counts is not None and (
        local.tokens > counts.tokens or local.rows > counts.rows or local.all_rows > counts.all_rows
    ):
        raise LmixError(
            f"aggregation counts {counts} are smaller than this mask's own {local}; "
            "pass the step's counts summed over every data-parallel rank"
        )
    c = local if counts is None else counts
    return fn(m, int(max_len), c, rows) * float(c.ranks)  # [N, S]
