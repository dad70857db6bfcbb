"""Contract suite for advantage estimators (cf. scikit-learn's ``check_estimator``).

Plugin authors call :func:`check_advantage_estimator` on an instance from their own tests, or decorate a test with
:func:`parametrize_with_checks` to get one test per check of :data:`ADVANTAGE_CHECKS`. Each check raises
``AssertionError`` naming the estimator and what failed. The suite draws rewards from [0, 1] (the range of
correctness rewards), includes groups of one sample, constant groups, missing (NaN) rewards, empty responses and
non-contiguous group ids, and needs no Hypothesis.

Checks:
    * output is ``[N, S]`` float32, exactly 0 outside the mask, finite (NaN rewards included), deterministic, and
      the inputs are not modified;
    * rows permuted (with their group ids and masks) permute the output; relabelling group ids changes nothing;
    * padding columns (mask 0) added on either side change nothing;
    * declared invariances hold on batches whose groups all have >= 2 valid rewards: every name in the estimator's
      ``invariances`` (``"shift"``: r → r + b, ``"scale"``: r → a·r with a > 0; see
      :data:`~lmix_core.interfaces.advantage.INVARIANCES`) is checked the same way for every estimator, to 1e-3;
    * data parallelism does not change the result: the batch's groups split over two ranks (two threads whose
      ``AdvantageInputs.all_sum`` really sums what both pass) give the advantages of the whole batch in one process.
      An estimator with statistics over the whole batch must reduce them with ``inputs.all_sum``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, NoReturn

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.advantage import INVARIANCES, AdvantageEstimator, Invariance
from lmix_core.testing import _suite
from lmix_core.types import AdvantageInputs

#: The reward transforms applied for each declared invariance.
INVARIANCE_MAPS: dict[Invariance, tuple[Callable[[Tensor], Tensor], ...]] = {
    "shift": (lambda r: r + 0.5, lambda r: r - 3.0),
    "scale": (lambda r: r * 0.5, lambda r: r * 3.0),
}
_RTOL = 1e-3
_ATOL = 1e-3


_SUITE = "check_advantage_estimator"


def _fail(est: AdvantageEstimator, check: str, detail: str) -> NoReturn:
    _suite.fail(_SUITE, est, check, detail)


def _msg(est: AdvantageEstimator, check: str, label: str, detail: str) -> str:
    return _suite.message(_SUITE, est, check, f"{label}: {detail}")


def _batch(
    gen: torch.Generator, sizes: list[int], seq_len: int, *, nan: float = 0.0, empty_rows: int = 0
) -> AdvantageInputs:
    """Groups of the given sizes with ids drawn sparse and shuffled rows; rewards on a 0.25 grid in [0, 1]."""
    n = sum(sizes)
    ids = torch.randperm(1000, generator=gen)[: len(sizes)] - 500  # [G]
    group_ids = torch.repeat_interleave(ids, torch.tensor(sizes))  # [N]
    rewards = torch.randint(0, 5, (n,), generator=gen).float() / 4.0  # [N]
    if nan > 0:
        rewards = torch.where(torch.rand(n, generator=gen) < nan, torch.tensor(float("nan")), rewards)  # [N]
    lengths = torch.randint(1, seq_len + 1, (n,), generator=gen)  # [N]
    if empty_rows:
        lengths[torch.randperm(n, generator=gen)[:empty_rows]] = 0
    start = torch.randint(0, seq_len, (n,), generator=gen)  # [N] prompt length before the response
    pos = torch.arange(2 * seq_len)[None, :]  # [1, 2S]
    mask = (pos >= start[:, None]) & (pos < (start + lengths)[:, None])  # [N, 2S]
    perm = torch.randperm(n, generator=gen)  # [N]
    return AdvantageInputs(rewards=rewards[perm], group_ids=group_ids[perm], mask=mask[perm])


def cases(seed: int = 0) -> Iterator[tuple[str, AdvantageInputs]]:
    """The suite's batches, ``(label, inputs)``."""
    gen = torch.Generator().manual_seed(seed)
    yield "groups of 4", _batch(gen, [4, 4, 4, 4], 6)
    yield "uneven groups", _batch(gen, [2, 5, 3, 8], 5)
    yield "singletons", _batch(gen, [1, 3, 1, 2, 1], 4)
    yield "one row", _batch(gen, [1], 3)
    yield "nan rewards", _batch(gen, [4, 4, 3, 2], 5, nan=0.3)
    yield "empty responses", _batch(gen, [3, 3, 2], 4, empty_rows=3)
    constant = _batch(gen, [4, 3], 4)
    yield "constant groups", attrs.evolve(constant, rewards=torch.full_like(constant.rewards, 0.75))
    all_nan = _batch(gen, [3, 2], 4)
    yield "all nan", attrs.evolve(all_nan, rewards=torch.full_like(all_nan.rewards, float("nan")))
    blank = _batch(gen, [2, 2], 4)
    yield "all empty", attrs.evolve(blank, mask=torch.zeros_like(blank.mask))


def _invariance_cases(seed: int = 1) -> Iterator[tuple[str, AdvantageInputs]]:
    gen = torch.Generator().manual_seed(seed)
    yield "groups of 4", _batch(gen, [4, 4, 4, 4], 6)
    yield "uneven groups", _batch(gen, [2, 5, 3, 8], 5)
    yield "two groups", _batch(gen, [6, 2], 7)


def _run(est: AdvantageEstimator, inputs: AdvantageInputs) -> Tensor:
    return est(inputs)


def check_output_shape_and_dtype(est: AdvantageEstimator) -> None:
    """The output is a ``[N, S]`` float32 tensor."""
    for label, inputs in cases():
        out = _run(est, inputs)
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(inputs.mask.shape):
            _fail(
                est,
                "shape",
                f"{label}: expected a tensor of shape {tuple(inputs.mask.shape)}, got {out!r:.80}",
            )
        if out.dtype != torch.float32:
            _fail(est, "dtype", f"{label}: expected float32, got {out.dtype}")


def check_zero_outside_mask(est: AdvantageEstimator) -> None:
    """Every position outside the response mask is exactly 0."""
    for label, inputs in cases():
        out = _run(est, inputs)
        outside = out[~inputs.mask.bool()]
        if outside.numel() and bool((outside != 0).any()):
            _fail(est, "zero outside mask", f"{label}: {int((outside != 0).sum())} non-zero padded positions")


def check_finite(est: AdvantageEstimator) -> None:
    """Advantages are finite, also for NaN rewards, singleton and constant groups and empty masks."""
    for label, inputs in cases():
        out = _run(est, inputs)
        if not bool(torch.isfinite(out).all()):
            _fail(est, "finite", f"{label}: non-finite advantages for rewards {inputs.rewards.tolist()}")


def check_deterministic_and_pure(est: AdvantageEstimator) -> None:
    """Two calls give identical results and the inputs are left unmodified."""
    for label, inputs in cases():
        before = (inputs.rewards.clone(), inputs.group_ids.clone(), inputs.mask.clone())
        first = _run(est, inputs)
        second = _run(est, inputs)
        if not torch.equal(first, second):
            _fail(est, "deterministic", f"{label}: two calls differ")
        same = (
            torch.equal(torch.nan_to_num(before[0], nan=-7.0), torch.nan_to_num(inputs.rewards, nan=-7.0))
            and torch.equal(before[1], inputs.group_ids)
            and torch.equal(before[2], inputs.mask)
        )
        if not same:
            _fail(est, "pure", f"{label}: the estimator modified its inputs in place")


def check_row_permutation(est: AdvantageEstimator) -> None:
    """Permuting rows (rewards, group ids and masks together) permutes the output rows the same way."""
    gen = torch.Generator().manual_seed(123)
    for label, inputs in cases():
        n = inputs.rewards.shape[0]
        perm = torch.randperm(n, generator=gen)
        permuted = AdvantageInputs(
            rewards=inputs.rewards[perm], group_ids=inputs.group_ids[perm], mask=inputs.mask[perm]
        )
        expected = _run(est, inputs)[perm]
        torch.testing.assert_close(
            _run(est, permuted),
            expected,
            rtol=1e-5,
            atol=1e-6,
            msg=partial(_msg, est, "permutation", label),
        )


def check_group_relabelling(est: AdvantageEstimator) -> None:
    """Only which rows share a group id matters, not the id values."""
    for label, inputs in cases():
        relabelled = attrs.evolve(inputs, group_ids=inputs.group_ids * 7 + 1_000_003)
        torch.testing.assert_close(
            _run(est, relabelled),
            _run(est, inputs),
            rtol=1e-5,
            atol=1e-6,
            msg=partial(_msg, est, "group relabelling", label),
        )


def check_padding_columns(est: AdvantageEstimator) -> None:
    """Adding padding columns (mask 0) on either side changes nothing in the original columns."""
    for label, inputs in cases():
        n, s = inputs.mask.shape
        pad = torch.zeros(n, 3, dtype=inputs.mask.dtype)
        padded = attrs.evolve(inputs, mask=torch.cat([pad, inputs.mask, pad[:, :2]], dim=1))
        out = _run(est, padded)
        torch.testing.assert_close(
            out[:, 3 : 3 + s],
            _run(est, inputs),
            rtol=1e-5,
            atol=1e-6,
            msg=partial(_msg, est, "padding", label),
        )


def check_declared_invariances(est: AdvantageEstimator) -> None:
    """Declared invariances (``shift``, ``scale``) hold on batches whose groups all have >= 2 valid rewards."""
    declared = est.invariances
    if not isinstance(declared, frozenset | set):
        _fail(est, "invariances", f"invariances must be a frozenset of names (got {declared!r})")
    unknown = set(declared) - set(INVARIANCES)
    if unknown:
        _fail(est, "invariances", f"unknown invariance names {sorted(unknown)}; known: {list(INVARIANCES)}")
    for label, inputs in _invariance_cases():
        base = _run(est, inputs)
        for kind in (k for k in INVARIANCES if k in declared):
            for fn in INVARIANCE_MAPS[kind]:
                moved = _run(est, attrs.evolve(inputs, rewards=fn(inputs.rewards)))
                torch.testing.assert_close(
                    moved,
                    base,
                    rtol=_RTOL,
                    atol=_ATOL,
                    msg=partial(_msg, est, kind, label),
                )


class InProcessRanks:
    """``world_size`` ranks as threads of one process, with a real ``all_sum`` between them.

    Each rank's ``all_sum(t)`` waits until every rank has passed its tensor for the same call, then returns their
    sum (added in rank order, so every rank gets the same bits). A rank that makes fewer calls, or calls with
    another shape, breaks the barrier: :meth:`run` then raises ``AssertionError``.
    """

    def __init__(self, world_size: int, *, timeout_s: float = 10.0) -> None:
        self.world_size = world_size
        self._slots: list[Tensor | None] = [None] * world_size
        self._barrier = threading.Barrier(world_size, timeout=timeout_s)

    def all_sum(self, rank: int) -> Callable[[Tensor], Tensor]:
        """The ``all_sum`` of rank ``rank``."""

        def reduce(values: Tensor, /) -> Tensor:
            self._slots[rank] = values.clone()
            self._barrier.wait()
            parts = [p for p in self._slots if p is not None]  # all filled: every rank passed the barrier
            self._barrier.wait()  # nobody overwrites a slot before every rank has read them all
            total = parts[0]
            for part in parts[1:]:
                total = total + part  # raises on a shape mismatch
            return total

        return reduce

    def run(self, fn: Callable[[int], Tensor]) -> list[Tensor]:
        """``fn(rank)`` on every rank at once; the results in rank order."""
        out: list[Any] = [None] * self.world_size
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            try:
                out[rank] = fn(rank)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                self._barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
            detail = repr(real[0]) if real else "the ranks made different all_sum calls"
            raise AssertionError(detail) from (real or errors)[0]
        return out


def check_data_parallel_split(est: AdvantageEstimator) -> None:
    """The batch's groups split over two ranks, with a real ``all_sum`` between them, give the one-process result."""
    for label, inputs in cases():
        ids = torch.unique(inputs.group_ids)  # [G] sorted
        if ids.numel() < 2:
            continue
        rows = [
            torch.isin(inputs.group_ids, part) for part in (ids[: ids.numel() // 2], ids[ids.numel() // 2 :])
        ]
        ranks = InProcessRanks(2)

        def on_rank(
            rank: int,
            inputs: AdvantageInputs = inputs,
            rows: list[Tensor] = rows,
            ranks: InProcessRanks = ranks,
        ) -> Tensor:
            share = AdvantageInputs(
                rewards=inputs.rewards[rows[rank]],
                group_ids=inputs.group_ids[rows[rank]],
                mask=inputs.mask[rows[rank]],
                all_sum=ranks.all_sum(rank),
            )
            return est(share)

        try:
            parts = ranks.run(on_rank)
        except AssertionError as exc:
            _fail(est, "data-parallel split", f"{label}: {exc}")
        split = torch.zeros_like(inputs.mask, dtype=torch.float32)  # [N, S]
        for part, r in zip(parts, rows):
            split[r] = part
        torch.testing.assert_close(
            split,
            _run(est, inputs),
            rtol=1e-6,
            atol=1e-6,
            msg=partial(
                _msg, est, "data-parallel split", f"{label} (reduce batch-level statistics with all_sum)"
            ),
        )


ADVANTAGE_CHECKS: tuple[Callable[[AdvantageEstimator], None], ...] = (
    check_output_shape_and_dtype,
    check_zero_outside_mask,
    check_finite,
    check_deterministic_and_pure,
    check_row_permutation,
    check_group_relabelling,
    check_padding_columns,
    check_declared_invariances,
    check_data_parallel_split,
)


def check_advantage_estimator(estimator: AdvantageEstimator) -> None:
    """Run every check of :data:`ADVANTAGE_CHECKS` on ``estimator``.

    Raises:
        AssertionError: naming the estimator, the check and the case that failed.
    """
    _suite.run_checks(_SUITE, AdvantageEstimator, estimator, ADVANTAGE_CHECKS)


def parametrize_with_checks(
    estimators: Mapping[str, AdvantageEstimator] | Iterable[AdvantageEstimator],
) -> Any:
    """A ``pytest.mark.parametrize("estimator, check", ...)`` decorator: one test per (estimator, check).

    ``estimators`` is a list of instances (test ids from the class names) or a mapping ``id -> instance``.

    Example::

        @parametrize_with_checks([MyEstimator.default()])
        def test_contract(estimator, check):
            check(estimator)
    """
    return _suite.parametrize_with_checks("estimator", estimators, ADVANTAGE_CHECKS)
