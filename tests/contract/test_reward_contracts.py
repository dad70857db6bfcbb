"""Every registered reward verifier (built-in or plugin) passes ``check_reward``; the suite catches broken ones."""

from __future__ import annotations

import itertools
from typing import final

import attrs
import pytest

from lmix_core import registries
from lmix_core.config import build
from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.rewards.pool import RewardPool
from lmix_core.testing.reward import check_reward, nasty_samples
from lmix_core.types import RewardInput, Verdict


@pytest.fixture(scope="module")
def pool():
    with RewardPool(workers=2) as p:
        yield p


@pytest.mark.parametrize("name", registries.rewards.names())
def test_registered_reward_passes_contract_with_defaults(pool, name):
    """The registered verifier, built with its default Config, satisfies the reward contract."""
    check_reward(registries.rewards.get(name).default(), pool=pool)


# Non-default settings that reach code the defaults do not.
BRANCHES = [
    ("math", {"fallback": "none"}),
    ("math", {"fallback": "last_number", "max_factorial": 5, "max_power_terms": 3}),
    ("multiple_choice", {"choices": "ABCDEFGHIJ"}),
    ("format", {"required_tags": ["think", "answer"], "boxed": "any", "pattern": r"(?s)<think>.*</think>.*"}),
    ("format", {"required_tags": [], "pattern": r"(a|aa)*b", "mode": "search"}),
    ("exact_match", {"normalize": ["numbers", "strip_punctuation"], "answer": "boxed"}),
    ("exact_match", {"answer": "answer_tag"}),
    ("overlong", {"max_len": 10, "cache_len": 10, "penalty_factor": 2.5}),
]


@pytest.mark.parametrize(("name", "params"), BRANCHES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BRANCHES)])
def test_builtin_reward_passes_contract_on_other_settings(pool, name, params):
    """Built-in verifiers satisfy the contract with non-default settings too."""
    cls = registries.rewards.get(name)
    check_reward(cls(build(cls.Config, params)), pool=pool)


def test_nasty_samples_cover_the_promised_cases():
    """The nasty list holds empty, megabyte, unbalanced, unclosed-boxed, surrogate, sympy-bomb, huge-number and
    NUL inputs."""
    texts = [s.completion for s in nasty_samples()]
    assert "" in texts and "\\boxed{" in texts and "\ud800" in texts and "\x00" in texts
    assert any(len(t) >= 1_000_000 for t in texts)
    assert "{" * 100_000 in texts and "\\boxed{9^{9^{9^{9}}}}" in texts
    assert any(t.count("9") >= 5000 for t in texts)


# -- the suite catches broken verifiers ----------------------------------------------------------------------
_calls = itertools.count()


@final
class Broken(RewardVerifier):
    """A verifier with a switchable defect."""

    @attrs.frozen(kw_only=True)
    class Config:
        defect: str = "none"

    def score_one(self, sample: RewardInput, /) -> Verdict:
        defect, text = self.config.defect, sample.completion
        if defect == "raises_on_surrogates":
            text.encode("utf-8")
        if defect == "raises_on_empty" and not text:
            raise IndexError("string index out of range")
        if defect == "nan":
            return Verdict(score=float("nan"), reason="nan")
        if defect == "out_of_range":
            return Verdict(score=2.0, reason="double")
        if defect == "empty_reason":
            return Verdict(score=0.0, reason="")
        if defect == "random":
            return Verdict(score=float(next(_calls) % 2), reason="coin")
        return Verdict(score=0.0, reason="fine")


@final
class Unpicklable(RewardVerifier):
    """Holds a lambda, so it cannot be sent to a worker."""

    @attrs.frozen(kw_only=True)
    class Config:
        pass

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.helper = lambda s: s

    def score_one(self, sample: RewardInput, /) -> Verdict:
        return Verdict(score=0.0, reason="fine")


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        ("raises_on_surrogates", "crashed: UnicodeEncodeError"),
        ("raises_on_empty", "crashed: IndexError"),
        ("nan", "non-finite"),
        ("out_of_range", "outside \\[0, 1\\]"),
        ("empty_reason", "empty reason"),
        ("random", "not deterministic"),
    ],
)
def test_check_reward_catches_defects(pool, defect, message):
    """Each defect makes check_reward raise an AssertionError naming the broken rule."""
    with pytest.raises(AssertionError, match=message):
        check_reward(Broken(Broken.Config(defect=defect)), pool=pool)


def test_check_reward_catches_unpicklable_verifiers(pool):
    """A verifier the pool cannot send to workers fails the contract."""
    with pytest.raises(AssertionError, match="cannot be pickled"):
        check_reward(Unpicklable(Unpicklable.Config()), pool=pool)


def test_check_reward_accepts_a_factory_and_a_well_behaved_verifier():
    """A zero-argument factory works like an instance, with a pool made and closed by the suite."""
    verdicts = check_reward(lambda: Broken(Broken.Config()))
    assert len(verdicts) == len(nasty_samples()) and {v.reason for v in verdicts} == {"fine"}
