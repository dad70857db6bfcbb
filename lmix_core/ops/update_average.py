"""Update averaging: several optimiser states step from one parameter snapshot, their updates are averaged.

RL Excursions (Bansal et al., arXiv 2606.04272, "RL Excursions during Pre-Training"; the algorithm box of the
authors' page)::

    θ̄ ← θ                                        # snapshot
    Δ_k = OptUpdate_k(g_k at θ̄; s_k)             # each optimiser k has its own state s_k (AdamW moments)
    θ ← θ̄ + Σ_k w_k Δ_k                          # RL Excursions: K = 2, w = (½, ½)

Backends call :func:`step_averaged` when a mixer sets ``num_optimizer_states = 2`` (``parallel_average``).

An empty group: a state whose group had no micro-batch this step (on any data-parallel rank; e.g. a step whose
questions have no demonstrations) takes no part: its optimiser does not step (moments and step count untouched)
and the present states' weights are rescaled to keep the total (:func:`present_weights`). For
``parallel_average`` a step without SFT rows is then a plain RL step at full weight (and vice versa), not half of
one. lmix's choice: the paper pairs every RL batch with an SFT batch.

Weight decay: AdamW's decoupled decay is part of each Δ_k (``−lr_k · wd_k · θ̄``), so the average applies
``−(Σ_k w_k lr_k wd_k) · θ̄``: with weights summing to 1 and equal ``lr``/``wd`` the decay is applied once, at the
usual rate (not twice). Learning-rate schedulers are the caller's business (step each state's scheduler after).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["present_weights", "step_averaged"]


def present_weights(weights: Sequence[float], present: Sequence[bool]) -> tuple[float, ...]:
    """``w'_k = w_k · Σ_j w_j / Σ_{j present} w_j`` for present states, 0 for absent ones.

    With every state present the weights are unchanged; with ``(w, 1 − w)`` and one state absent the other gets
    1. When the present states' weights sum to 0 they stay 0 (their updates were weighted out anyway).

    Args:
        weights: ``K`` finite weights.
        present: ``K`` flags: whether state ``k`` received a gradient this step.
    """
    if len(weights) != len(present):
        raise ValueError(f"'present' must have one flag per weight (got {len(present)} for {len(weights)})")
    w = [float(x) for x in weights]
    total = sum(w)
    kept = sum(x for x, on in zip(w, present, strict=True) if on)
    if kept == 0.0:
        return tuple(0.0 for _ in w)
    return tuple((x * total) / kept if on else 0.0 for x, on in zip(w, present, strict=True))


def step_averaged(
    params: Sequence[torch.nn.Parameter],
    grads: Sequence[Sequence[Tensor | None]],
    optimizers: Sequence[torch.optim.Optimizer],
    weights: Sequence[float],
    *,
    present: Sequence[bool] | None = None,
) -> None:
    """Step each optimiser from the same snapshot θ̄ and set ``θ ← θ̄ + Σ_k w_k Δ_k`` in place.

    Each optimiser keeps its own state; optimiser ``k`` sees only ``grads[k]`` and only the snapshot parameters,
    so its state after the call is bit-identical to what one plain ``step()`` from θ̄ would leave.

    Memory: one extra copy of the parameters when ``K = 2`` and the weights sum to 1 (the paper's case: the first
    state's result is swapped into the snapshot buffer one tensor at a time and the two results are
    interpolated); otherwise two copies (snapshot and running sum). ``K = 1`` with weight 1 makes no copy.

    Args:
        params: the parameters the optimisers own (every optimiser's parameters must be among them).
        grads: ``K`` lists, each aligned with ``params``; ``None`` means no gradient for that parameter (the
            optimiser skips it, so its Δ is 0 there).
        optimizers: ``K`` optimisers, one per state.
        weights: ``K`` finite weights ``w_k`` of the updates.
        present: ``K`` flags, False for a state whose group was empty this step: that optimiser is not stepped
            and the weights become :func:`present_weights` (``None``: every state is present).

    Raises:
        ValueError: mismatched lengths, non-finite weights, or an optimiser owning a parameter not in ``params``.

    On return every ``p.grad`` is None.
    """
    params = list(params)
    K = len(optimizers)
    if K == 0 or len(grads) != K or len(weights) != K:
        raise ValueError(
            f"step_averaged needs one gradient list and one weight per optimiser "
            f"(got {K} optimisers, {len(grads)} gradient lists, {len(weights)} weights)"
        )
    for k, g in enumerate(grads):
        if len(g) != len(params):
            raise ValueError(
                f"'grads[{k}]' must have one entry per parameter (got {len(g)} for {len(params)})"
            )
    w = [float(x) for x in weights]
    if not all(math.isfinite(x) for x in w):
        raise ValueError(f"'weights' must be finite (got {tuple(weights)!r})")
    owned = {id(p) for p in params}
    for k, opt in enumerate(optimizers):
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) not in owned:
                    raise ValueError(
                        f"optimiser {k} owns a parameter that is not in 'params' (shape {tuple(p.shape)})"
                    )

    if present is not None:
        w = list(present_weights(w, present))
        keep = [k for k in range(K) if present[k]]
        grads, optimizers, w = [grads[k] for k in keep], [optimizers[k] for k in keep], [w[k] for k in keep]
        K = len(keep)
    with torch.no_grad():
        if K == 0:
            pass  # no state received a gradient: nothing moves, no optimiser state changes
        elif K == 1 and w[0] == 1.0:
            _step(params, grads[0], optimizers[0])
        elif K == 2 and sum(w) == 1.0:
            _step_two_convex(params, grads, optimizers, w)
        else:
            _step_general(params, grads, optimizers, w)
    for p in params:
        p.grad = None


def _step(
    params: list[torch.nn.Parameter], grads: Sequence[Tensor | None], opt: torch.optim.Optimizer
) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()


def _step_two_convex(
    params: list[torch.nn.Parameter],
    grads: Sequence[Sequence[Tensor | None]],
    optimizers: Sequence[torch.optim.Optimizer],
    w: list[float],
) -> None:
    """K = 2, w_0 + w_1 = 1: θ̄ + w_0 Δ_0 + w_1 Δ_1 = w_0 θ_0 + w_1 θ_1 (θ_k = θ̄ + Δ_k), one extra copy."""
    buf = [p.detach().clone() for p in params]  # θ̄, later θ_0
    _step(params, grads[0], optimizers[0])  # p = θ_0
    for p, b in zip(params, buf):
        theta_0 = p.detach().clone()  # one tensor at a time
        p.copy_(b)  # p = θ̄ (exact)
        b.copy_(theta_0)  # buf = θ_0
        del theta_0
    _step(params, grads[1], optimizers[1])  # p = θ_1
    for p, b in zip(params, buf):
        p.lerp_(b, w[0])  # θ_1 + w_0 (θ_0 − θ_1) = w_0 θ_0 + w_1 θ_1; exact at w_0 ∈ {0, 1}


def _step_general(
    params: list[torch.nn.Parameter],
    grads: Sequence[Sequence[Tensor | None]],
    optimizers: Sequence[torch.optim.Optimizer],
    w: list[float],
) -> None:
    """Any K and weights: snapshot θ̄ and a running Σ_{k<K−1} w_k Δ_k (two extra copies)."""
    snap = [p.detach().clone() for p in params]  # θ̄
    acc: list[Tensor] | None = None  # Σ w_k Δ_k so far
    last = len(optimizers) - 1
    for k, opt in enumerate(optimizers):
        if k > 0:
            for p, s in zip(params, snap):
                p.copy_(s)  # back to θ̄
        _step(params, grads[k], opt)  # p = θ̄ + Δ_k
        if k < last:
            if acc is None:
                acc = [(p - s).mul_(w[k]) for p, s in zip(params, snap)]  # w_k Δ_k
            else:
                for a, p, s in zip(acc, params, snap):
                    a.add_(p - s, alpha=w[k])
        else:
            for i, (p, s) in enumerate(zip(params, snap)):
                p.sub_(s).mul_(w[k]).add_(s)  # θ̄ + w_K Δ_K
                if acc is not None:
                    p.add_(acc[i])
