"""Contract suite for policy combiners (cf. scikit-learn's ``check_estimator``).

Plugin authors call :func:`check_combiner` on an instance from their own tests, or parametrise over
:data:`COMBINER_CHECKS` (:func:`parametrize_with_checks` builds the pytest decorator) to get one test per check.
Each check raises ``AssertionError`` naming the combiner, the check and the case that failed. Inputs come from a
seeded generator (no Hypothesis needed): logits of scale 1, 30 and 1e4, shapes ``[R, V]`` and ``[B, T, V]``,
dtypes float32, float64 and bfloat16, steps 0, 7 and 10⁶.

Checks:
    * declarations: ``num_references`` is an int >= 0, ``needs_entropy`` a bool, ``deploy`` is ``"combined"`` or
      ``"policy"``;
    * ``mix_logits`` keeps shape and dtype, is finite for finite inputs, and does not modify its inputs;
    * ``log_softmax`` of the output is normalised;
    * row-wise: permuting rows of every input permutes the output, and a subset of rows gives those rows;
    * per-row shift invariance: adding a per-row constant to any one input leaves ``softmax`` of the output
      unchanged;
    * no gradient reaches the references, and the policy's gradient is finite;
    * ``plan_rollouts``: ``[Q, G]`` int64, ``0 <= L <= demo_lengths[q]``, 0 without a demonstration, reproducible
      under the same generator seed;
    * ``loss_masks``: ``[N, S]`` finite non-negative float weights, 0 outside the mask; ``offpolicy`` a bool subset
      of the mask; ``offpolicy_gamma`` None or > 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

import torch
from torch import Tensor

from lmix_core.interfaces.combiner import LossMasks, PolicyCombiner
from lmix_core.testing import _suite

_V = 11
_SHAPES: tuple[tuple[int, ...], ...] = ((5, _V), (2, 3, _V))
_SCALES = (1.0, 30.0, 1e4)
_STEPS = (0, 7, 10**6)
_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_RTOL = 1e-6
_ATOL = 1e-6

Check = Callable[[PolicyCombiner], None]


_SUITE = "check_combiner"


def _msg(combiner: PolicyCombiner, check: str, detail: str) -> str:
    return _suite.message(_SUITE, combiner, check, detail)


def _fail(combiner: PolicyCombiner, check: str, detail: str) -> NoReturn:
    _suite.fail(_SUITE, combiner, check, detail)


def _logits(gen: torch.Generator, shape: Sequence[int], *, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale  # [..., V]


def _inputs(
    combiner: PolicyCombiner, gen: torch.Generator, shape: Sequence[int], *, scale: float = 1.0
) -> tuple[Tensor, list[Tensor]]:
    z_policy = _logits(gen, shape, scale=scale)  # [..., V]
    z_refs = [_logits(gen, shape, scale=scale) for _ in range(combiner.num_references)]  # K × [..., V]
    return z_policy, z_refs


def _mix(combiner: PolicyCombiner, z_policy: Tensor, z_refs: Sequence[Tensor], step: int) -> Tensor:
    return combiner.mix_logits(z_policy, list(z_refs), step=step)


def _probs(z: Tensor) -> Tensor:
    return torch.softmax(z.to(torch.float64), dim=-1)  # [..., V]


def _close(
    combiner: PolicyCombiner, check: str, label: str, actual: Tensor, expected: Tensor, *, atol: float = _ATOL
) -> None:
    torch.testing.assert_close(
        actual,
        expected,
        rtol=_RTOL,
        atol=atol,
        msg=lambda m: _msg(combiner, check, f"{label}: {m}"),
    )


# -- declarations ------------------------------------------------------------------------------------------------
def check_declarations(combiner: PolicyCombiner) -> None:
    """``num_references``, ``needs_entropy`` and ``deploy`` have valid values."""
    k = combiner.num_references
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        _fail(combiner, "declarations", f"num_references must be an int >= 0 (got {k!r})")
    if not isinstance(combiner.needs_entropy, bool):
        _fail(combiner, "declarations", f"needs_entropy must be a bool (got {combiner.needs_entropy!r})")
    deploy = combiner.deploy
    if deploy not in ("combined", "policy"):
        _fail(combiner, "declarations", f"deploy must be 'combined' or 'policy' (got {deploy!r})")


# -- mix_logits --------------------------------------------------------------------------------------------------
def check_shape_dtype_and_purity(combiner: PolicyCombiner) -> None:
    """Output keeps the input's shape and dtype; inputs are left unmodified."""
    gen = torch.Generator().manual_seed(0)
    for shape in _SHAPES:
        for dtype in _DTYPES:
            for step in _STEPS:
                z_policy, z_refs = _inputs(combiner, gen, shape)
                z_policy, z_refs = z_policy.to(dtype), [z.to(dtype) for z in z_refs]
                before = [z.clone() for z in (z_policy, *z_refs)]
                out = _mix(combiner, z_policy, z_refs, step)
                label = f"shape {list(shape)}, {dtype}, step {step}"
                if not isinstance(out, Tensor):
                    _fail(combiner, "shape/dtype", f"{label}: mix_logits returned {type(out).__name__}")
                if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
                    _fail(
                        combiner,
                        "shape/dtype",
                        f"{label}: got {out.dtype} {list(out.shape)}, expected {dtype} {list(shape)}",
                    )
                for i, (a, b) in enumerate(zip((z_policy, *z_refs), before)):
                    if not torch.equal(a, b):
                        what = "z_policy" if i == 0 else f"z_refs[{i - 1}]"
                        _fail(combiner, "purity", f"{label}: mix_logits modified its input {what} in place")


def check_finite(combiner: PolicyCombiner) -> None:
    """Finite inputs (up to |z| ~ 1e4) give finite combined logits."""
    gen = torch.Generator().manual_seed(1)
    for scale in _SCALES:
        for dtype in (torch.float32, torch.float64):
            for step in _STEPS:
                z_policy, z_refs = _inputs(combiner, gen, _SHAPES[0], scale=scale)
                out = _mix(combiner, z_policy.to(dtype), [z.to(dtype) for z in z_refs], step)
                if not bool(torch.isfinite(out).all()):
                    _fail(combiner, "finite", f"logit scale {scale}, {dtype}, step {step}: non-finite output")


def check_normalised(combiner: PolicyCombiner) -> None:
    """``log_softmax`` of the output is a distribution: exp sums to 1 on every row, every value ≤ 0."""
    gen = torch.Generator().manual_seed(2)
    for scale in _SCALES:
        for step in _STEPS:
            z_policy, z_refs = _inputs(combiner, gen, _SHAPES[1], scale=scale)
            logq = torch.log_softmax(
                _mix(combiner, z_policy, z_refs, step).to(torch.float64), dim=-1
            )  # [..., V]
            total = logq.exp().sum(-1)  # [...]
            _close(combiner, "normalised", f"scale {scale}, step {step}", total, torch.ones_like(total))
            if bool((logq > 1e-12).any()):
                _fail(combiner, "normalised", f"scale {scale}, step {step}: log-probabilities above 0")


def check_row_wise(combiner: PolicyCombiner) -> None:
    """Permuting rows of every input permutes the output; a subset of rows gives those rows of the output."""
    gen = torch.Generator().manual_seed(3)
    for step in _STEPS:
        z_policy, z_refs = _inputs(combiner, gen, (7, _V), scale=3.0)
        out = _probs(_mix(combiner, z_policy, z_refs, step))  # [R, V]
        perm = torch.randperm(7, generator=gen)  # [R]
        permuted = _probs(_mix(combiner, z_policy[perm], [z[perm] for z in z_refs], step))  # [R, V]
        _close(combiner, "row-wise", f"step {step}, rows permuted by {perm.tolist()}", permuted, out[perm])
        rows = torch.tensor([4, 1])  # [2]
        subset = _probs(_mix(combiner, z_policy[rows], [z[rows] for z in z_refs], step))  # [2, V]
        _close(combiner, "row-wise", f"step {step}, rows {rows.tolist()} alone", subset, out[rows])


def check_shift_invariance(combiner: PolicyCombiner) -> None:
    """Adding a per-row constant to any one input leaves the combined distribution unchanged."""
    gen = torch.Generator().manual_seed(4)
    for step in _STEPS:
        z_policy, z_refs = _inputs(combiner, gen, _SHAPES[1], scale=3.0)
        base = _probs(_mix(combiner, z_policy, z_refs, step))  # [..., V]
        for which in range(1 + len(z_refs)):
            shift = torch.randn(*_SHAPES[1][:-1], 1, generator=gen, dtype=torch.float64) * 50.0  # [..., 1]
            zs = [z_policy, *z_refs]
            zs[which] = zs[which] + shift  # [..., V]
            moved = _probs(_mix(combiner, zs[0], zs[1:], step))  # [..., V]
            what = "z_policy" if which == 0 else f"z_refs[{which - 1}]"
            _close(
                combiner, "shift invariance", f"step {step}, per-row constant added to {what}", moved, base
            )


def check_gradients(combiner: PolicyCombiner) -> None:
    """No gradient reaches the references; the policy's gradient (if any) is finite."""
    gen = torch.Generator().manual_seed(5)
    for step in _STEPS:
        z_policy, z_refs = _inputs(combiner, gen, _SHAPES[0], scale=2.0)
        leaves = [z.clone().requires_grad_(True) for z in (z_policy, *z_refs)]
        out = _mix(combiner, leaves[0], leaves[1:], step)
        weights = torch.randn(out.shape, generator=gen, dtype=torch.float64)  # [R, V]
        objective = (torch.log_softmax(out.to(torch.float64), dim=-1) * weights).sum()  # []
        if not objective.requires_grad:
            continue  # nothing differentiable at all: no gradient reaches anything
        grads = torch.autograd.grad(objective, leaves, allow_unused=True)
        for k, g in enumerate(grads[1:]):
            if g is not None and bool((g != 0).any()):
                _fail(
                    combiner,
                    "gradients",
                    f"step {step}: a gradient reached z_refs[{k}] (references are frozen)",
                )
        if grads[0] is not None and not bool(torch.isfinite(grads[0]).all()):
            _fail(combiner, "gradients", f"step {step}: non-finite gradient for z_policy")


# -- plan_rollouts -----------------------------------------------------------------------------------------------
def _plan(combiner: PolicyCombiner, step: int, lengths: Tensor, group: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return combiner.plan_rollouts(step=step, demo_lengths=lengths, group_size=group, generator=gen)


def check_plan_rollouts(combiner: PolicyCombiner) -> None:
    """``[Q, G]`` int64 prefix lengths within ``[0, |y*|]``, 0 without a demonstration, reproducible."""
    lengths = torch.tensor([0, 1, 5, 17, 64, 0, 3], dtype=torch.long)  # [Q]
    for step in (0, 1, 50, 10**6):
        for group in (1, 4, 8):
            plan = _plan(combiner, step, lengths, group, seed=step + group)
            label = f"step {step}, G {group}"
            if (
                not isinstance(plan, Tensor)
                or plan.dtype != torch.long
                or tuple(plan.shape) != (len(lengths), group)
            ):
                got = f"{plan.dtype} {list(plan.shape)}" if isinstance(plan, Tensor) else type(plan).__name__
                _fail(
                    combiner, "plan_rollouts", f"{label}: got {got}, expected int64 [{len(lengths)}, {group}]"
                )
            if bool((plan < 0).any()) or bool((plan > lengths[:, None]).any()):
                _fail(
                    combiner,
                    "plan_rollouts",
                    f"{label}: lengths {plan.tolist()} outside [0, {lengths.tolist()}]",
                )
            again = _plan(combiner, step, lengths, group, seed=step + group)
            if not torch.equal(plan, again):
                _fail(combiner, "plan_rollouts", f"{label}: not reproducible under the same generator seed")
    empty = _plan(combiner, 0, torch.zeros(0, dtype=torch.long), 4, seed=0)
    if tuple(empty.shape) != (0, 4):
        _fail(combiner, "plan_rollouts", f"no questions: got shape {list(empty.shape)}, expected [0, 4]")


# -- loss_masks --------------------------------------------------------------------------------------------------
def layout(
    prompt_lengths: Sequence[int], response_lengths: Sequence[int], prefix_lengths: Sequence[int], width: int
) -> tuple[Tensor, Tensor]:
    """``(mask, prefix_mask)`` for rows ``[prompt][response][pad]`` whose first ``L`` response tokens are forced.

    Args:
        prompt_lengths: prompt tokens per row.
        response_lengths: response tokens per row (forced prefix included).
        prefix_lengths: forced tokens per row, each at most the response length.
        width: ``S``, at least ``prompt + response`` for every row.

    Returns:
        Two ``[N, S]`` bool tensors.
    """
    pos = torch.arange(width)[None, :]  # [1, S]
    start = torch.tensor(list(prompt_lengths), dtype=torch.long)[:, None]  # [N, 1]
    resp = torch.tensor(list(response_lengths), dtype=torch.long)[:, None]  # [N, 1]
    pre = torch.tensor(list(prefix_lengths), dtype=torch.long)[:, None]  # [N, 1]
    mask = (pos >= start) & (pos < start + resp)  # [N, S]
    prefix = (pos >= start) & (pos < start + pre)  # [N, S]
    return mask, prefix


def _check_masks(combiner: PolicyCombiner, label: str, out: LossMasks, mask: Tensor) -> None:
    if not isinstance(out, LossMasks):
        _fail(combiner, "loss_masks", f"{label}: returned {type(out).__name__}, expected LossMasks")
    w, off = out.token_weight, out.offpolicy
    if tuple(w.shape) != tuple(mask.shape) or not w.is_floating_point():
        _fail(
            combiner,
            "loss_masks",
            f"{label}: token_weight is {w.dtype} {list(w.shape)}, expected float {list(mask.shape)}",
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        _fail(combiner, "loss_masks", f"{label}: token_weight must be finite and >= 0")
    if bool((w[~mask] != 0).any()):
        _fail(combiner, "loss_masks", f"{label}: token_weight is non-zero outside the response mask")
    if tuple(off.shape) != tuple(mask.shape) or off.dtype != torch.bool:
        _fail(
            combiner,
            "loss_masks",
            f"{label}: offpolicy is {off.dtype} {list(off.shape)}, expected bool {list(mask.shape)}",
        )
    if bool((off & ~mask).any()):
        _fail(combiner, "loss_masks", f"{label}: offpolicy marks tokens outside the response mask")
    gamma = out.offpolicy_gamma
    if gamma is not None and not (isinstance(gamma, float | int) and gamma > 0):
        _fail(combiner, "loss_masks", f"{label}: offpolicy_gamma must be None or > 0 (got {gamma!r})")


def check_loss_masks(combiner: PolicyCombiner) -> None:
    """Weights and off-policy marks are well-formed for batches with and without forced prefixes."""
    gen = torch.Generator().manual_seed(6)
    cases = {
        "no prefixes": ([2, 0, 3, 1], [4, 5, 0, 6], [0, 0, 0, 0]),
        "prefixed rows": ([2, 0, 3, 1, 2], [4, 5, 2, 6, 7], [4, 2, 0, 3, 1]),
        "one row": ([1], [3], [3]),
    }
    for label, (prompt, resp, pre) in cases.items():
        width = max(p + r for p, r in zip(prompt, resp)) + 2
        mask, prefix = layout(prompt, resp, pre, width)
        entropy = torch.rand(mask.shape, generator=gen) * mask  # [N, S]
        for step in _STEPS:
            given = entropy if combiner.needs_entropy else None
            before = (mask.clone(), prefix.clone())
            out = combiner.loss_masks(mask=mask, prefix_mask=prefix, entropy=given, step=step)
            _check_masks(combiner, f"{label}, step {step}", out, mask)
            if not (torch.equal(mask, before[0]) and torch.equal(prefix, before[1])):
                _fail(combiner, "loss_masks", f"{label}: loss_masks modified its inputs in place")
    empty = torch.zeros(0, 5, dtype=torch.bool)  # [0, S]
    out = combiner.loss_masks(
        mask=empty, prefix_mask=empty, entropy=torch.zeros(0, 5) if combiner.needs_entropy else None, step=0
    )
    _check_masks(combiner, "empty batch", out, empty)


COMBINER_CHECKS: tuple[Check, ...] = (
    check_declarations,
    check_shape_dtype_and_purity,
    check_finite,
    check_normalised,
    check_row_wise,
    check_shift_invariance,
    check_gradients,
    check_plan_rollouts,
    check_loss_masks,
)


def check_combiner(combiner: PolicyCombiner) -> None:
    """Run every check of :data:`COMBINER_CHECKS` on ``combiner``.

    Raises:
        AssertionError: naming the combiner, the check and the case that failed.
    """
    _suite.run_checks(_SUITE, PolicyCombiner, combiner, COMBINER_CHECKS)


def parametrize_with_checks(combiners: Mapping[str, PolicyCombiner] | Iterable[PolicyCombiner]) -> Any:
    """A ``pytest.mark.parametrize("combiner, check", ...)`` decorator: one test per (combiner, check).

    ``combiners`` is a list of instances (test ids from the class names) or a mapping ``id -> instance``.

    Example::

        @parametrize_with_checks([MyCombiner.default()])
        def test_contract(combiner, check):
            check(combiner)
    """
    return _suite.parametrize_with_checks("combiner", combiners, COMBINER_CHECKS)
