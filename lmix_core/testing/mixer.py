"""Contract suite for mixers: every registered mixer, built-in or third-party, must pass :func:`check_mixer`.

A plugin author calls it from a test::

    from lmix_core.testing.mixer import check_mixer

    def test_my_mixer_contract():
        check_mixer(lambda: MyMixer(MyMixer.Config(seed=3)))

It drives the mixer like the training loop does (``plan`` → ``mix`` → ``observe`` each step) over a scripted run of
rewards and feedback, and raises ``AssertionError`` naming the first broken rule.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NoReturn

import torch

from lmix_core.interfaces.mixer import Mixer
from lmix_core.types import MixDecision, MixerInputs, StepFeedback, StepPlan

__all__ = ["check_mixer", "scripted_run"]

Trace = list[tuple[StepPlan, MixDecision]]


def check_mixer(
    mixer_factory: Callable[[], Mixer],
    *,
    num_steps: int = 24,
    num_questions: int = 4,
    group_size: int = 4,
) -> None:
    """Check the mixer contract.

    Rules checked:
        * ``num_optimizer_states`` is 1 or 2 and ``update_weights`` has that many finite, non-negative weights;
        * ``needs_reference`` is a bool, the same for every mixer from the factory. The scripted run reports
          ``StepFeedback.kl_to_initial`` on every step with rollouts when it is True (as the loop does, since the
          run then loads the initial policy), never when it is False (a run may have no reference). A mixer that
          declares False must make the same decisions when a KL is reported anyway (the loop measures it whenever
          another part loaded a reference): one that reads the KL must declare it;
        * decisions are reproducible: two mixers from the factory make identical plans and decisions;
        * ``plan(step)`` may be called again for the same step with the same answer and no side effect;
        * coefficients and weights are finite and ``≥ 0``; ``rl_weights`` has one weight per question; ``sft``
          holds ``(int, float)`` pairs; ``label`` is a non-empty string;
        * plan and decision agree: no RL term without rollouts, no SFT term when the plan said no SFT;
        * ``state_dict`` survives ``torch.save``/``torch.load(weights_only=True)``, and a fresh mixer loading it
          makes the same future decisions as the original; taking a ``state_dict`` changes nothing;
        * ``sft_token_weights`` returns finite, non-negative weights of the input's shape, without gradient.

    Args:
        mixer_factory: builds a fresh mixer, the same (config and seed) at every call.
        num_steps: steps of the scripted run.
        num_questions: questions per step (Q).
        group_size: rollouts per question (G).

    Raises:
        AssertionError: a rule is broken.
    """
    mixer = mixer_factory()
    _check_class(mixer)
    _check_needs_reference(mixer, mixer_factory())
    _check_token_weights(mixer)

    trace_a = scripted_run(mixer, num_steps=num_steps, num_questions=num_questions, group_size=group_size)
    trace_b = scripted_run(
        mixer_factory(), num_steps=num_steps, num_questions=num_questions, group_size=group_size
    )
    _same(trace_a, trace_b, "two mixers built by the factory made different decisions on the same inputs")
    if not mixer.needs_reference:
        with_kl = scripted_run(
            mixer_factory(),
            num_steps=num_steps,
            num_questions=num_questions,
            group_size=group_size,
            kl_to_initial=True,
        )
        _same(
            with_kl,
            trace_a,
            "needs_reference is False, but decisions changed when StepFeedback.kl_to_initial was reported: "
            "a mixer whose observe reads the KL must declare needs_reference = True",
        )

    split = num_steps // 2
    original = mixer_factory()
    run = partial(scripted_run, num_steps=num_steps, num_questions=num_questions, group_size=group_size)
    head = run(original, stop=split)
    saved = _round_trip(original.state_dict())
    tail = run(original, start=split)
    _same(head + tail, trace_a, "taking a state_dict changed later decisions")
    resumed = mixer_factory()
    resumed.load_state_dict(saved)
    tail_resumed = run(resumed, start=split)
    _same(tail_resumed, tail, f"a mixer loaded from the step-{split} state_dict made different decisions")


def scripted_run(
    mixer: Mixer,
    *,
    num_steps: int = 24,
    num_questions: int = 4,
    group_size: int = 4,
    start: int = 0,
    stop: int | None = None,
    kl_to_initial: bool | None = None,
) -> Trace:
    """Drive ``mixer`` over steps ``start … stop − 1`` of a fixed script, checking every step; return the trace.

    The script (independent of the mixer's own generator) draws binary rewards with success probability 0.3 so
    that all-wrong, mixed and all-right groups all occur, question ids ``step·Q + i`` modulo 5·Q (questions recur,
    as over epochs), and gradient norms and KL that vary with the step.

    ``kl_to_initial``: whether feedback reports a KL on steps with rollouts (never on the others); default
    ``mixer.needs_reference``, as in a run where no other part loads a reference.
    """
    stop = num_steps if stop is None else stop
    report_kl = mixer.needs_reference if kl_to_initial is None else kl_to_initial
    g = torch.Generator().manual_seed(20240611)
    script = [
        (torch.rand(num_questions, group_size, generator=g) < 0.3).float()  # [Q, G]
        for _ in range(num_steps)
    ]
    trace: Trace = []
    for step in range(start, stop):
        plan = mixer.plan(step)
        _check_plan(plan, step)
        if mixer.plan(step) != plan:
            _fail(f"plan({step}) changed when called twice ({plan} then {mixer.plan(step)})")
        qids = tuple((step * num_questions + i) % (5 * num_questions) for i in range(num_questions))
        rewards = script[step] if plan.rollouts else None  # [Q, G]
        inputs = MixerInputs(
            step=step,
            question_ids=qids,
            rewards=rewards,
            correct=None if rewards is None else rewards >= 1.0,
        )
        decision = mixer.mix(inputs)
        _check_decision(decision, plan, inputs)
        feedback = StepFeedback(
            step=step,
            decision=decision,
            grad_norm_rl=1.0 + 0.1 * step if decision.rl_coef > 0 else None,
            grad_norm_sft=2.0 + 0.5 * math.sin(step) if decision.sft_coef > 0 else None,
            grad_norm=1.5 + 0.05 * step,
            kl_to_initial=0.01 * step if plan.rollouts and report_kl else None,
        )
        mixer.observe(feedback)
        trace.append((plan, decision))
    return trace


def _fail(message: str) -> NoReturn:
    raise AssertionError(message)


def _check_class(mixer: Mixer) -> None:
    if not isinstance(mixer, Mixer):
        _fail(f"{mixer!r} is not a lmix_core.interfaces.mixer.Mixer")
    n = type(mixer).num_optimizer_states
    if n not in (1, 2):
        _fail(f"num_optimizer_states must be 1 or 2 (got {n!r})")
    w = tuple(mixer.update_weights)
    if len(w) != n:
        _fail(f"update_weights must have num_optimizer_states = {n} entries (got {w!r})")
    if not all(isinstance(x, float | int) and math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        _fail(f"update_weights must be finite, >= 0 and not all 0 (got {w!r})")


def _check_needs_reference(mixer: Mixer, other: Mixer) -> None:
    needs = mixer.needs_reference
    if not isinstance(needs, bool):
        _fail(f"needs_reference must be a bool (got {needs!r})")
    if other.needs_reference is not needs:
        _fail(
            f"needs_reference must be the same for every mixer from the factory (got {needs} and "
            f"{other.needs_reference})"
        )


def _check_token_weights(mixer: Mixer) -> None:
    logp = -torch.linspace(0.0, 6.0, 15).reshape(3, 5).requires_grad_(True)  # [N, S], p from 1 to e^-6
    w = mixer.sft_token_weights(logp.detach())  # [N, S]
    if not isinstance(w, torch.Tensor) or w.shape != logp.shape:
        _fail(f"sft_token_weights must return a tensor of the input's shape {tuple(logp.shape)} (got {w!r})")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        _fail(f"sft_token_weights must be finite and >= 0 (got {w})")
    if mixer.sft_token_weights(logp).requires_grad:
        _fail("sft_token_weights must not carry gradient (detach the log-probs)")


def _check_plan(plan: StepPlan, step: int) -> None:
    if not isinstance(plan, StepPlan):
        _fail(f"plan({step}) must return a StepPlan (got {plan!r})")


def _finite_nonneg(x: object) -> bool:
    return isinstance(x, float | int) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def _check_decision(d: MixDecision, plan: StepPlan, inputs: MixerInputs) -> None:
    where = f"step {inputs.step}: "
    if not isinstance(d, MixDecision):
        _fail(f"{where}mix must return a MixDecision (got {d!r})")
    if not (_finite_nonneg(d.rl_coef) and _finite_nonneg(d.sft_coef)):
        _fail(
            f"{where}coefficients must be finite and >= 0 (got rl_coef={d.rl_coef!r}, sft_coef={d.sft_coef!r})"
        )
    Q = len(inputs.question_ids)
    if len(d.rl_weights) != Q or not all(_finite_nonneg(w) for w in d.rl_weights):
        _fail(f"{where}rl_weights must be {Q} finite weights >= 0, one per question (got {d.rl_weights!r})")
    for pair in d.sft:
        ok = (
            isinstance(pair, tuple)
            and len(pair) == 2
            and isinstance(pair[0], int)
            and _finite_nonneg(pair[1])
        )
        if not ok:
            _fail(f"{where}sft must hold (dataset index, weight >= 0) pairs (got {pair!r})")
    if not (isinstance(d.label, str) and d.label):
        _fail(f"{where}label must be a non-empty string (got {d.label!r})")
    if not plan.rollouts and d.rl_coef != 0 and any(w != 0 for w in d.rl_weights):
        _fail(f"{where}the plan had no rollouts but the decision has an RL term ({d})")
    if not plan.sft and d.sft_coef != 0 and any(w != 0 for _, w in d.sft):
        _fail(f"{where}the plan had no SFT but the decision has an SFT term ({d})")


def _round_trip(state: Mapping[str, Any]) -> Mapping[str, Any]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    try:
        return torch.load(buf, weights_only=True)
    except Exception as exc:
        _fail(f"state_dict must hold only tensors and plain Python values (torch.load weights_only): {exc}")
        raise


def _same(a: Trace, b: Trace, message: str) -> None:
    if len(a) != len(b):
        _fail(f"{message} (traces of {len(a)} and {len(b)} steps)")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            _fail(f"{message}: first difference at trace entry {i}:\n  {x}\n  {y}")
