"""Contract suite for reward verifiers, built-in or third-party.

Usage from a plugin's tests::

    from lmix_core.testing.reward import check_reward

    def test_countdown_contract():
        check_reward(Countdown.default())

:func:`check_reward` runs the verifier through a :class:`~lmix_core.rewards.pool.RewardPool` on a list of nasty
inputs (:func:`nasty_samples`) and raises ``AssertionError`` listing every broken promise:

* ``score_one`` never raises (a ``crashed: ...`` verdict from the pool means it did, or returned a non-finite
  score or something other than a :class:`Verdict`); hitting the time limit (``timeout``) is allowed;
* every score is finite and every reason a non-empty string;
* ``correctness`` and ``format`` scores lie in [0, 1];
* the verifier pickles (the pool sends it to worker processes), and ``score`` agrees with ``score_one``;
* judging is deterministic: the same sample twice gives the same verdict.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Sequence

from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.rewards.pool import RewardPool
from lmix_core.types import RewardInput, Verdict

_ROLES = ("correctness", "format", "shaping")

#: Completions that have broken verifiers somewhere: empty, huge, unbalanced, unparsable, pathological for sympy.
NASTY_COMPLETIONS: tuple[str, ...] = (
    "",
    " ",
    "\n\n\t",
    "The answer is 1. " * 65_536,  # about a megabyte of text
    "x" * 1_500_000,
    "{" * 100_000,
    "}" * 100_000,
    "{" * 3000 + "1" + "}" * 3000,
    "\\boxed{" + "{" * 500 + "2" + "}" * 501,
    "\\boxed{",
    "\\boxed{" * 20_000,
    "\\boxed{" + "1" * 5000,
    "\\boxed{}",
    "\\boxed{\\}",
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{10^{10^{10}}}",
    "\\boxed{2^{1000000000}}",
    "\\boxed{100000!}",
    "\\boxed{" + "9" * 5000 + "}",
    "9" * 20_000,
    "The answer is " + "7" * 4500,
    "\\boxed{\\frac{1}{0}}",
    "\\boxed{\\sqrt{-1}}",
    "\\boxed{\\frac{\\frac{\\frac{1}{2}}{3}}{4}}",
    "\\boxed{x^{2^{2^{2^{2}}}}}",
    "$$\\begin{pmatrix}" + "1&" * 2000 + "1\\end{pmatrix}$$",
    "\ud800",
    "abc \udfff \\boxed{\ud800}",
    "\x00",
    "\\boxed{1\x002}\x00\x00",
    "<answer>",
    "</answer><answer>",
    "<answer>" + "(" * 5000 + "1" + ")" * 5000 + "</answer>",
    "<answer>" + "1+" * 20_000 + "1</answer>",
    "<answer>9**9**9**9</answer>",
    "<answer>__import__('os').system('echo hi')</answer>",
    "<think>" * 1000 + "</think>" * 999,
    "Answer: " + "B" * 1000,
    "The answer is (A) or (B) or (C) or (D)",
    "**B** **C** (A) D.",
    "١٢٣ ٤٥٦ \\boxed{٣}",
    "\u202e\u2066 RTL \ufeff BOM \u200b zero-width",
    "🙂" * 1000,
    "\r\n" * 10_000,
    "\\" * 10_001,
    "$" * 10_000,
    "\\boxed{\\text{" + "a" * 1000 + "}}",
    "\\begin{" * 1000,
    "nan inf -inf 1e999999 -0.0",
    "\\boxed{1000000!}",
    "\\boxed{\\binom{10^6}{500000}}",
    "\\boxed{(a+b+c+d)^{20}}",
    "\\boxed{\\Gamma(10^6)}",
    "\\boxed{\\sum_{n=1}^{\\infty} \\frac{(-1)^n}{\\ln n}}",
    "$3 $3 $3 $3 " * 2000,
    "答案：Ｂ 选项Ｃ不对。الإجابة: ب",
)
#: References paired with the completions above, round-robin.
NASTY_REFERENCES: tuple[str, ...] = (
    "",
    "1",
    "\\frac{1}{2}",
    "B",
    "24",
    "9^{9^{9^{9}}}",
    "\ud800",
    "{" * 2000,
    "9" * 5000,
    "\x00",
)
#: Per-sample metadata paired round-robin, with wrong types and huge values for verifiers that read it.
NASTY_METADATA: tuple[dict, ...] = (
    {},
    {"target": 24, "numbers": [1, 2, 3, 4]},
    {"target": "24", "numbers": "1 2 3 4"},
    {"target": None, "numbers": None},
    {"target": 10**200, "numbers": [10**100, 10**100, 3]},
    {"target": float("nan"), "numbers": [float("inf"), -1, 0]},
    {"target": 5, "numbers": [0] * 10_000},
    {"choices": ["x"] * 3, "answer": {"nested": [1, {2: 3}]}},
)
#: Response lengths paired round-robin (``num_tokens``).
NASTY_NUM_TOKENS: tuple[int, ...] = (0, 1, 10**9, 20_000, 16_385, 7)


def nasty_samples() -> list[RewardInput]:
    """Every nasty completion once, with references, metadata and lengths paired round-robin."""
    samples = []
    for i, completion in enumerate(NASTY_COMPLETIONS):
        samples.append(
            RewardInput(
                prompt="Solve the problem.\x00\ud800" if i % 7 == 0 else "",
                completion=completion,
                reference=NASTY_REFERENCES[i % len(NASTY_REFERENCES)],
                metadata=NASTY_METADATA[i % len(NASTY_METADATA)],
                num_tokens=NASTY_NUM_TOKENS[i % len(NASTY_NUM_TOKENS)],
            )
        )
    for j, reference in enumerate(NASTY_REFERENCES):
        samples.append(
            RewardInput(prompt="", completion="\\boxed{1} The answer is B", reference=reference, metadata={})
        )
        samples.append(
            RewardInput(
                prompt="", completion=NASTY_COMPLETIONS[-1 - j], reference=reference, metadata={"target": 1}
            )
        )
    return samples


#: Ordinary samples used for the determinism and ``score``-versus-``score_one`` checks.
BENIGN_SAMPLES: tuple[RewardInput, ...] = (
    RewardInput(prompt="2+2?", completion="<think>easy</think> \\boxed{4}", reference="4", num_tokens=12),
    RewardInput(prompt="Pick one.", completion="The answer is (B).", reference="B", num_tokens=6),
    RewardInput(
        prompt="Reach 24.",
        completion="<answer>(4 + 2) * (3 + 1)</answer>",
        reference="24",
        metadata={"target": 24, "numbers": [1, 2, 3, 4]},
        num_tokens=15,
    ),
    RewardInput(prompt="", completion="no idea", reference="7", num_tokens=2),
)


def _problems(
    name: str, verifier: RewardVerifier, samples: Sequence[RewardInput], verdicts: list[Verdict]
) -> list[str]:
    bounded = verifier.role in ("correctness", "format")
    problems = []
    for sample, verdict in zip(samples, verdicts):
        where = f"{name} on completion {sample.completion[:50]!r} (reference {sample.reference[:20]!r})"
        if not isinstance(verdict, Verdict):
            problems.append(f"{where}: returned {type(verdict).__name__}, not a Verdict")
            continue
        if not isinstance(verdict.reason, str) or not verdict.reason.strip():
            problems.append(f"{where}: empty reason")
        elif verdict.reason.startswith("crashed"):
            problems.append(f"{where}: {verdict.reason}")
        if not isinstance(verdict.score, int | float) or not math.isfinite(verdict.score):
            problems.append(f"{where}: score {verdict.score!r} is not a finite number")
        elif bounded and not 0.0 <= verdict.score <= 1.0:
            problems.append(f"{where}: {verifier.role} score {verdict.score!r} is outside [0, 1]")
    return problems


def check_reward(
    verifier: RewardVerifier | Callable[[], RewardVerifier],
    *,
    pool: RewardPool | None = None,
    timeout_s: float = 2.0,
    extra_samples: Sequence[RewardInput] = (),
) -> list[Verdict]:
    """Check the reward-verifier contract; raise ``AssertionError`` listing every violation.

    Args:
        verifier: the verifier to check, with the Config it is meant to be used with, or a zero-argument factory
            (``Countdown.default``) as the other ``check_*`` suites take.
        pool: a pool to run in (a test module can share one); by default a 2-worker pool made and closed here.
        timeout_s: per-sample time limit in the pool.
        extra_samples: more samples of the verifier's own task to include.

    Returns:
        The pool's verdicts on :func:`nasty_samples` followed by ``extra_samples``, for further checks.
    """
    if not isinstance(verifier, RewardVerifier) and callable(verifier):
        verifier = verifier()
    name = type(verifier).__name__
    problems = []
    if not isinstance(verifier, RewardVerifier):
        raise AssertionError(f"{name} does not subclass lmix_core.interfaces.reward.RewardVerifier")
    if verifier.role not in _ROLES:
        problems.append(f"{name}.role is {verifier.role!r}, not one of {_ROLES}")
    try:
        copy = pickle.loads(pickle.dumps(verifier))
    except Exception as exc:
        raise AssertionError(f"{name} cannot be pickled, so the reward pool cannot run it: {exc!r}") from exc
    if copy.config != verifier.config:
        problems.append(f"{name}'s Config does not survive pickling: {copy.config!r} != {verifier.config!r}")

    benign = list(BENIGN_SAMPLES)
    try:
        one_by_one = [verifier.score_one(s) for s in benign]
        batch = verifier.score(benign)
    except Exception as exc:
        raise AssertionError(f"{name} raised on an ordinary sample: {exc!r}") from exc
    if list(batch) != one_by_one:
        problems.append(f"{name}.score disagrees with score_one: {list(batch)} != {one_by_one}")
    if [verifier.score_one(s) for s in benign] != one_by_one:
        problems.append(f"{name} is not deterministic on ordinary samples")
    problems += _problems(name, verifier, benign, one_by_one)

    samples = nasty_samples() + list(extra_samples)
    own = pool is None
    scorer = RewardPool(workers=2, timeout_s=timeout_s) if pool is None else pool
    try:
        verdicts = scorer.score([verifier], samples, timeout_s=timeout_s)[0]
        again = scorer.score([verifier], samples[:8], timeout_s=timeout_s)[0]
    finally:
        if own:
            scorer.close()
    problems += _problems(name, verifier, samples, verdicts)
    for first, second, sample in zip(verdicts, again, samples):
        if first != second and "timeout" not in (first.reason, second.reason):
            problems.append(
                f"{name} is not deterministic on {sample.completion[:50]!r}: {first} then {second}"
            )
    if problems:
        raise AssertionError(f"{name} breaks the reward-verifier contract:\n  " + "\n  ".join(problems))
    return verdicts
