"""``overlong``: DAPO's soft length penalty."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.config import build
from lmix_core.errors import ConfigError
from lmix_core.rewards.overlong import Overlong
from lmix_core.types import RewardInput


def penalty(num_tokens: int, **params) -> float:
    verifier = Overlong(build(Overlong.Config, params))
    return verifier.score_one(RewardInput(prompt="", completion="", num_tokens=num_tokens)).score


def test_by_hand():
    """L_max = 100, L_cache = 20: free up to 80, linear to −1 at 100, −1 beyond."""
    cfg = {"max_len": 100, "cache_len": 20}
    assert penalty(0, **cfg) == 0.0
    assert penalty(80, **cfg) == 0.0
    assert penalty(90, **cfg) == pytest.approx(-0.5, abs=1e-12)  # (80 − 90) / 20
    assert penalty(100, **cfg) == pytest.approx(-1.0, abs=1e-12)  # (80 − 100) / 20
    assert penalty(5000, **cfg) == -1.0
    assert penalty(90, **cfg, penalty_factor=0.5) == pytest.approx(-0.25, abs=1e-12)


def test_dapo_defaults_and_role():
    """Defaults are DAPO's L_max = 20480, L_cache = 4096; the role is 'shaping'."""
    assert Overlong.default().role == "shaping"
    assert penalty(16384) == 0.0
    assert penalty(18432) == pytest.approx(-0.5, abs=1e-12)  # (16384 − 18432) / 4096


@given(length=st.integers(0, 300), max_len=st.integers(1, 200), frac=st.floats(0.01, 1.0))
def test_penalty_is_bounded_monotone_and_continuous(length, max_len, frac):
    """R_len is in [−1, 0], non-increasing in the length, and has no jump at L_max − L_cache or L_max."""
    cache = max(1, int(max_len * frac))
    cfg = {"max_len": max_len, "cache_len": cache}
    here, longer = penalty(length, **cfg), penalty(length + 1, **cfg)
    assert -1.0 <= longer <= here <= 0.0
    assert here - longer <= 1.0 / cache + 1e-9  # at most one band step per token


def test_reasons_describe_the_band():
    """Reasons say whether the length is within budget, in the soft band or over max_len."""
    v = Overlong(Overlong.Config(max_len=10, cache_len=4))
    reasons = [v.score_one(RewardInput(prompt="", completion="", num_tokens=n)).reason for n in (3, 8, 11)]
    assert reasons == [
        "within budget (3 <= 6 tokens)",
        "soft penalty (8 > 6 tokens)",
        "over max_len (11 > 10 tokens)",
    ]


def test_config_validation():
    """cache_len must not exceed max_len; lengths must be positive."""
    with pytest.raises(ConfigError, match="'cache_len' must be <= max_len=10"):
        build(Overlong.Config, {"max_len": 10, "cache_len": 11})
    with pytest.raises(ConfigError, match="'max_len' must be > 0"):
        build(Overlong.Config, {"max_len": 0})
