"""Contract suite for policy losses (cf. scikit-learn's ``check_estimator``).

Plugin authors call :func:`check_loss` on an instance from their own tests, or decorate a test with
:func:`parametrize_with_checks` to get one test per check of :data:`LOSS_CHECKS`. Each check raises
``AssertionError`` naming the loss and what failed.

Checks:
    * ``token_weights``: ``[N, S]`` float32, finite, >= 0, 0 outside the mask; padding columns change nothing;
    * data-parallel counts: ``counts = StepCounts.of(mask)`` changes nothing, and with the rows split unequally
      over W ranks and ``counts`` summed over them, the ranks' weights concatenated and divided by W equal the
      one-process weights (backends average gradients over ranks, so the step's gradient is the global batch's);
    * the loss is a finite 0-dim tensor with a finite gradient; metrics are detached, finite 0-dim tensors;
    * tokens outside the mask (weight 0) change nothing, neither the loss nor any gradient, whatever they hold;
    * the loss is linear in ``token_weights`` (it is ``Σ w · ℓ``);
    * micro-batch additivity: with weights from the whole batch, loss(batch) = loss(rows A) + loss(rows B), and
      so are the gradients;
    * at ``logp == old_logp`` the gradient w.r.t. ``logp`` is ``−A · w`` (skipped when the loss's KL or entropy
      term is on);
    * off-policy tokens with ``offpolicy_gamma = None`` behave like the others; with γ set they take LUFFY's
      shaping, whose gradient is ``−A · w · γ p / (p + γ)²`` at any ratio (skipped with KL/entropy on);
    * a loss that does not need ``ref_logp``/``entropy`` ignores them; one that does raises ``LmixError`` without;
    * an all-padding micro-batch gives loss 0 and zero gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, NoReturn

import attrs
import torch
from torch import Tensor

from lmix_core.errors import LmixError
from lmix_core.interfaces.loss import PolicyLoss
from lmix_core.ops.aggregation import StepCounts
from lmix_core.testing import _suite
from lmix_core.types import LossInputs

_N, _S, _MAX_LEN = 6, 9, 12
_GAMMA = 0.1


_SUITE = "check_loss"


def _msg(loss: PolicyLoss, check: str, detail: str) -> str:
    return _suite.message(_SUITE, loss, check, detail)


def _fail(loss: PolicyLoss, check: str, detail: str) -> NoReturn:
    _suite.fail(_SUITE, loss, check, detail)


@attrs.frozen(kw_only=True)
class Case:
    """One micro-batch's raw tensors (all ``[N, S]``); ``logp`` and ``entropy`` are leaves made per call."""

    logp: Tensor
    old_logp: Tensor
    advantages: Tensor
    mask: Tensor
    ref_logp: Tensor
    entropy: Tensor
    offpolicy: Tensor


def make_case(seed: int = 0, *, n: int = _N, s: int = _S) -> Case:
    """A random micro-batch: left prompt padding, random response lengths (one empty row), ratios near 1,
    sequence-level advantages, and off-policy marks on the first response tokens of two rows."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 3, (n,), generator=gen)  # [N]
    lengths = torch.randint(1, s - 2, (n,), generator=gen)  # [N]
    lengths[n // 2] = 0
    pos = torch.arange(s)[None, :]  # [1, S]
    mask = (pos >= start[:, None]) & (pos < (start + lengths)[:, None])  # [N, S]
    logp = -torch.rand(n, s, generator=gen) * 3.0  # [N, S]
    old_logp = logp + 0.3 * torch.randn(n, s, generator=gen)  # [N, S]
    adv = torch.randn(n, 1, generator=gen).expand(n, s).clone()  # [N, S]
    ref_logp = logp + 0.2 * torch.randn(n, s, generator=gen)  # [N, S]
    entropy = torch.rand(n, s, generator=gen) * 2.0  # [N, S]
    offpolicy = mask & (pos < (start + 2)[:, None]) & (torch.arange(n)[:, None] % 3 == 0)  # [N, S]
    zero = torch.zeros(n, s)
    return Case(
        logp=torch.where(mask, logp, zero),
        old_logp=torch.where(mask, old_logp, zero),
        advantages=torch.where(mask, adv, zero),
        mask=mask,
        ref_logp=torch.where(mask, ref_logp, zero),
        entropy=torch.where(mask, entropy, zero),
        offpolicy=offpolicy,
    )


def _inputs(
    case: Case,
    weights: Tensor,
    *,
    with_ref: bool = True,
    with_entropy: bool = True,
    offpolicy: bool = False,
    gamma: float | None = None,
) -> tuple[LossInputs, Tensor, Tensor]:
    logp = case.logp.clone().requires_grad_(True)
    entropy = case.entropy.clone().requires_grad_(True)
    inputs = LossInputs(
        logp=logp,
        old_logp=case.old_logp,
        advantages=case.advantages,
        mask=case.mask,
        token_weights=weights,
        ref_logp=case.ref_logp if with_ref else None,
        entropy=entropy if with_entropy else None,
        offpolicy=case.offpolicy if offpolicy else None,
        offpolicy_gamma=gamma,
    )
    return inputs, logp, entropy


def _loss_and_grads(
    loss: PolicyLoss, case: Case, weights: Tensor, **kw: Any
) -> tuple[Tensor, Tensor, Tensor]:
    inputs, logp, entropy = _inputs(case, weights, **kw)  # kw: _inputs' keyword options
    out = loss(inputs)
    value = out.loss
    if value.requires_grad:
        g_logp, g_ent = torch.autograd.grad(value, [logp, entropy], allow_unused=True)
    else:
        g_logp, g_ent = None, None
    g_logp = torch.zeros_like(logp) if g_logp is None else g_logp
    g_ent = torch.zeros_like(entropy) if g_ent is None else g_ent
    return value.detach(), g_logp, g_ent


def _regularised(loss: PolicyLoss) -> bool:
    return bool(loss.needs_ref_logp or loss.needs_entropy)


def check_token_weights(loss: PolicyLoss) -> None:
    """``token_weights`` is ``[N, S]`` float32, finite, >= 0, 0 off the mask, and ignores padding columns."""
    case = make_case(1)
    w = loss.token_weights(case.mask, max_len=_MAX_LEN)
    if not isinstance(w, Tensor) or tuple(w.shape) != tuple(case.mask.shape) or w.dtype != torch.float32:
        _fail(loss, "token_weights", f"expected float32 of shape {tuple(case.mask.shape)}, got {w!r:.80}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        _fail(loss, "token_weights", "weights must be finite and non-negative")
    if bool((w[~case.mask] != 0).any()):
        _fail(loss, "token_weights", "weights must be 0 outside the mask")
    pad = torch.zeros(case.mask.shape[0], 2, dtype=torch.bool)
    wide = loss.token_weights(torch.cat([pad, case.mask, pad], dim=1), max_len=_MAX_LEN)
    torch.testing.assert_close(
        wide[:, 2:-2], w, rtol=1e-6, atol=1e-7, msg=lambda m: _msg(loss, "token_weights padding", m)
    )


def check_step_counts(loss: PolicyLoss) -> None:
    """Weights from the summed counts of a data-parallel split, divided by W, are the one-process weights."""
    case = make_case(11)
    whole = loss.token_weights(case.mask, max_len=_MAX_LEN)
    try:
        local = loss.token_weights(case.mask, max_len=_MAX_LEN, counts=StepCounts.of(case.mask))
    except TypeError as e:
        _fail(loss, "step counts", f"token_weights must accept counts=StepCounts | None ({e})")
    torch.testing.assert_close(
        local, whole, rtol=1e-6, atol=1e-8, msg=lambda m: _msg(loss, "step counts (own counts)", m)
    )
    # Three ranks with 1, 3 and 2 rows (the empty row of make_case lands on the second rank).
    bounds = (0, 1, 4, case.mask.shape[0])
    parts = [case.mask[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    counts = StepCounts.of(parts[0]) + StepCounts.of(parts[1]) + StepCounts.of(parts[2])
    if counts.ranks != len(parts):
        _fail(loss, "step counts", "internal: summed counts must have ranks = number of parts")
    split = torch.cat([loss.token_weights(p, max_len=_MAX_LEN, counts=counts) for p in parts])  # [N, S]
    torch.testing.assert_close(
        split / counts.ranks, whole, rtol=1e-6, atol=1e-8, msg=lambda m: _msg(loss, "step counts (split)", m)
    )


def check_finite_scalar(loss: PolicyLoss) -> None:
    """The loss is a finite 0-dim tensor with finite gradients, and its metrics are detached finite scalars."""
    case = make_case(2)
    w = loss.token_weights(case.mask, max_len=_MAX_LEN)
    inputs, logp, _ = _inputs(case, w)
    out = loss(inputs)
    if not isinstance(out.loss, Tensor) or out.loss.ndim != 0 or not bool(torch.isfinite(out.loss)):
        _fail(loss, "finite scalar", f"loss must be a finite 0-dim tensor (got {out.loss!r})")
    if not out.loss.requires_grad:
        _fail(loss, "finite scalar", "loss does not depend on logp (requires_grad is False)")
    (grad,) = torch.autograd.grad(out.loss, [logp])
    if not bool(torch.isfinite(grad).all()):
        _fail(loss, "finite scalar", "gradient w.r.t. logp is not finite")
    for key, value in out.metrics.items():
        ok = (
            isinstance(value, Tensor)
            and value.ndim == 0
            and not value.requires_grad
            and bool(torch.isfinite(value))
        )
        if not ok:
            _fail(loss, "metrics", f"metric {key!r} must be a detached finite 0-dim tensor (got {value!r})")


def check_masked_tokens_ignored(loss: PolicyLoss) -> None:
    """Whatever masked positions hold, the loss and every gradient are unchanged, and their gradient is 0."""
    case = make_case(3)
    w = loss.token_weights(case.mask, max_len=_MAX_LEN)
    gen = torch.Generator().manual_seed(4)
    off = ~case.mask

    def garbage(x: Tensor, scale: float) -> Tensor:
        return torch.where(off, scale * torch.randn(x.shape, generator=gen), x)

    dirty = Case(
        logp=garbage(case.logp, 40.0),
        old_logp=garbage(case.old_logp, 40.0),
        advantages=garbage(case.advantages, 1e3),
        mask=case.mask,
        ref_logp=garbage(case.ref_logp, 40.0),
        entropy=garbage(case.entropy, 1e3),
        offpolicy=case.offpolicy | off,
    )
    for gamma in (None, _GAMMA):
        clean = _loss_and_grads(loss, case, w, offpolicy=True, gamma=gamma)
        messy = _loss_and_grads(loss, dirty, w, offpolicy=True, gamma=gamma)
        for what, a, b in zip(("loss", "grad logp", "grad entropy"), clean, messy):
            torch.testing.assert_close(
                b, a, rtol=1e-5, atol=1e-6, msg=partial(_msg, loss, f"masked tokens ({what})")
            )
        if bool((messy[1][off] != 0).any()) or bool((messy[2][off] != 0).any()):
            _fail(loss, "masked tokens", "masked positions received a non-zero gradient")


def check_linear_in_weights(loss: PolicyLoss) -> None:
    """Scaling ``token_weights`` by c scales the loss by c (the loss is ``Σ w · ℓ``)."""
    case = make_case(5)
    w = loss.token_weights(case.mask, max_len=_MAX_LEN)
    base, _, _ = _loss_and_grads(loss, case, w)
    scaled, _, _ = _loss_and_grads(loss, case, 2.5 * w)
    torch.testing.assert_close(
        scaled, 2.5 * base, rtol=1e-5, atol=1e-6, msg=lambda m: _msg(loss, "linear", m)
    )


def _rows(case: Case, rows: slice) -> Case:
    return Case(**{f.name: getattr(case, f.name)[rows] for f in attrs.fields(Case)})


def check_microbatch_additivity(loss: PolicyLoss) -> None:
    """With weights from the whole batch, the loss and gradients of two row halves add up to the whole's."""
    case = make_case(6)
    w = loss.token_weights(case.mask, max_len=_MAX_LEN)
    for gamma in (None, _GAMMA):
        whole = _loss_and_grads(loss, case, w, offpolicy=True, gamma=gamma)
        for k in (1, case.mask.shape[0] // 2):
            a = _loss_and_grads(loss, _rows(case, slice(0, k)), w[:k], offpolicy=True, gamma=gamma)
            b = _loss_and_grads(loss, _rows(case, slice(k, None)), w[k:], offpolicy=True, gamma=gamma)
            torch.testing.assert_close(
                a[0] + b[0], whole[0], rtol=1e-5, atol=1e-6, msg=lambda m: _msg(loss, "micro-batch loss", m)
            )
            torch.testing.assert_close(
                torch.cat([a[1], b[1]]),
                whole[1],
                rtol=1e-5,
                atol=1e-7,
                msg=lambda m: _msg(loss, "micro-batch grad", m),
            )


def check_gradient_at_old_policy(loss: PolicyLoss) -> None:
    """At ``logp == old_logp`` (first inner step) the gradient w.r.t. logp is ``−A · w``."""
    if _regularised(loss):
        return
    case = attrs.evolve(make_case(7), old_logp=make_case(7).logp)
    w = loss.token_weights(case.mask, max_len=_MAX_LEN)
    _, grad, _ = _loss_and_grads(loss, case, w)
    torch.testing.assert_close(
        grad,
        -case.advantages * w,
        rtol=1e-4,
        atol=1e-6,
        msg=lambda m: _msg(loss, "gradient at old policy", m),
    )


def check_offpolicy(loss: PolicyLoss) -> None:
    """γ = None treats off-policy tokens like the rest; with γ they get LUFFY's unclipped shaping gradient."""
    case = make_case(8)
    w = loss.token_weights(case.mask, max_len=_MAX_LEN)
    plain = _loss_and_grads(loss, case, w)
    marked = _loss_and_grads(loss, case, w, offpolicy=True, gamma=None)
    for what, a, b in zip(("loss", "grad logp"), plain, marked):
        torch.testing.assert_close(
            b, a, rtol=1e-6, atol=1e-7, msg=partial(_msg, loss, f"offpolicy γ=None {what}")
        )
    if _regularised(loss):
        return
    # Old log-probs far from the current ones on off-policy tokens: shaping must ignore them (no ratio, no clip).
    off = case.offpolicy
    at_old = attrs.evolve(case, old_logp=torch.where(off, case.logp - 3.0, case.logp))
    _, grad, _ = _loss_and_grads(loss, at_old, w, offpolicy=True, gamma=_GAMMA)
    p = case.logp.exp()
    shaped = _GAMMA * p / (p + _GAMMA) ** 2
    expected = torch.where(off, -case.advantages * w * shaped, -case.advantages * w)
    if not bool(off.any()):
        _fail(loss, "offpolicy", "internal: the case has no off-policy tokens")
    torch.testing.assert_close(
        grad, expected, rtol=1e-4, atol=1e-6, msg=lambda m: _msg(loss, "offpolicy shaping grad", m)
    )


def check_optional_inputs(loss: PolicyLoss) -> None:
    """``ref_logp``/``entropy`` are ignored when not needed and required (``LmixError``) when needed."""
    case = make_case(9)
    w = loss.token_weights(case.mask, max_len=_MAX_LEN)
    full, _, _ = _loss_and_grads(loss, case, w)
    for flag, needed in (("with_ref", loss.needs_ref_logp), ("with_entropy", loss.needs_entropy)):
        if needed:
            try:
                _loss_and_grads(loss, case, w, **{flag: False})
            except LmixError:
                continue
            _fail(
                loss,
                "optional inputs",
                f"needs the input dropped by {flag}=False but did not raise LmixError",
            )
        else:
            without, _, _ = _loss_and_grads(loss, case, w, **{flag: False})
            torch.testing.assert_close(
                without,
                full,
                rtol=1e-6,
                atol=1e-7,
                msg=partial(_msg, loss, f"unused input {flag}"),
            )


def check_empty_microbatch(loss: PolicyLoss) -> None:
    """A micro-batch with no response tokens gives loss 0 and zero gradients."""
    case = make_case(10)
    empty = attrs.evolve(case, mask=torch.zeros_like(case.mask), offpolicy=torch.zeros_like(case.mask))
    w = loss.token_weights(empty.mask, max_len=_MAX_LEN)
    value, g_logp, g_ent = _loss_and_grads(loss, empty, w)
    if not (bool(value == 0) and bool((g_logp == 0).all()) and bool((g_ent == 0).all())):
        _fail(loss, "empty micro-batch", f"expected loss 0 and zero gradients (got loss {float(value)!r})")


LOSS_CHECKS: tuple[Callable[[PolicyLoss], None], ...] = (
    check_token_weights,
    check_step_counts,
    check_finite_scalar,
    check_masked_tokens_ignored,
    check_linear_in_weights,
    check_microbatch_additivity,
    check_gradient_at_old_policy,
    check_offpolicy,
    check_optional_inputs,
    check_empty_microbatch,
)


def check_loss(loss: PolicyLoss) -> None:
    """Run every check of :data:`LOSS_CHECKS` on ``loss``.

    Raises:
        AssertionError: naming the loss and the check that failed.
    """
    _suite.run_checks(_SUITE, PolicyLoss, loss, LOSS_CHECKS)


def parametrize_with_checks(losses: Mapping[str, PolicyLoss] | Iterable[PolicyLoss]) -> Any:
    """A ``pytest.mark.parametrize("loss, check", ...)`` decorator: one test per (loss, check).

    ``losses`` is a list of instances (test ids from the class names) or a mapping ``id -> instance``.

    Example::

        @parametrize_with_checks([MyLoss.default()])
        def test_contract(loss, check):
            check(loss)
    """
    return _suite.parametrize_with_checks("loss", losses, LOSS_CHECKS)
