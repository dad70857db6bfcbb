"""The plugin's components pass lmix's contract suites, run exactly as any outside author would run them."""

from __future__ import annotations

from lmix_core.testing.combiner import check_combiner, parametrize_with_checks
from lmix_core.testing.reward import check_reward
from lmix_core.types import RewardInput
from lmix_example.countdown import Countdown
from lmix_example.entropy_gated import EntropyGated

#: Countdown-specific nasty inputs on top of the suite's own list.
COUNTDOWN_SAMPLES = [
    RewardInput(prompt="", completion=c, metadata={"target": 24, "numbers": [1, 2, 3, 4]})
    for c in [
        "<answer>" + "(" * 150 + "1" + ")" * 150 + "</answer>",  # deeper than the parser's nesting limit
        "<answer>99999999999 * 99999999999 * 99999999999 * 99999999999</answer>",
        "<answer>1 / 3 / 3 / 3 / 3 / 3 / 3 / 3 / 3 / 3</answer>",
        "<answer>lambda: 1</answer>",
        "<answer>[1, 2]</answer>",
        "<answer>1 if 2 else 3</answer>",
        "<answer>1\x00 + 2</answer>",
        "<answer>\ud800</answer>",
        "\\boxed{\\frac{1}{2}}",
    ]
]


def test_countdown_passes_the_reward_contract():
    """Countdown never raises, gives finite scores in [0, 1] and non-empty reasons, even on nasty inputs."""
    verdicts = check_reward(Countdown.default, extra_samples=COUNTDOWN_SAMPLES)
    assert all(v.reason != "timeout" for v in verdicts[-len(COUNTDOWN_SAMPLES) :])


def test_countdown_exactly_once_passes_the_reward_contract():
    """The exactly-once variant passes too."""
    check_reward(lambda: Countdown(Countdown.Config(usage="exactly_once", format_score=0.0)))


def test_entropy_gated_passes_the_combiner_contract():
    """EntropyGated satisfies the whole combiner contract with its defaults."""
    check_combiner(EntropyGated.default())


@parametrize_with_checks([EntropyGated(EntropyGated.Config(alpha_max=0.8, alpha_min=0.0))])
def test_open_gate_passes_each_combiner_check(combiner, check):
    """With a gate that can hand a position entirely to the reference, every check still holds (one test each)."""
    check(combiner)
