"""Every registered rollout engine passes ``check_rollout_engine``; the suite catches broken engines."""

from __future__ import annotations

from typing import Any, final

import attrs
import pytest

from lmix_core import registries
from lmix_core.interfaces.rollout_engine import EngineContext, RolloutEngine
from lmix_core.testing.rollout_engine import (
    check_combined_distribution,
    check_weight_loading,
    parametrize_with_checks,
)


def _factory(name: str) -> Any:
    cls = registries.rollout_engines.get(name)
    return lambda context: cls(cls.Config(), context)


@parametrize_with_checks({name: _factory(name) for name in registries.rollout_engines.names()})
def test_registered_engine_passes_contract_with_defaults(factory, check):
    """The registered engine, built with its default Config, satisfies each check of the engine contract."""
    check(factory)


def test_hf_engine_is_registered():
    """The built-in ``hf`` engine is found through the ``lmix.rollout_engines`` entry-point group."""
    entry = registries.rollout_engines.entry("hf")
    assert (entry.dist, entry.value) == ("lmix-hf", "lmix_hf.engine:HFEngine")


@final
class _Faulty(RolloutEngine):
    """The ``hf`` engine with one fault: it samples the policy alone, or keeps its first weights."""

    @attrs.frozen(kw_only=True)
    class Config:
        fault: str = "policy_alone"

    def __init__(self, config: Config, context: EngineContext) -> None:
        super().__init__(config, context)
        hf = registries.rollout_engines.get("hf")
        self.inner = hf(hf.Config(), context)
        self.loaded = False

    @property
    def needs_weights(self) -> bool:
        return self.inner.needs_weights

    def load_policy_weights(self, weights, /):
        if not (self.config.fault == "stale_weights" and self.loaded):
            self.inner.load_policy_weights(weights)
        self.loaded = True

    def generate(self, request, /):
        if self.config.fault == "policy_alone":
            request = attrs.evolve(request, distribution="policy")
        return self.inner.generate(request)


@pytest.mark.parametrize(
    ("fault", "check", "match"),
    [
        ("policy_alone", check_combined_distribution, "combined_distribution: combined"),
        ("stale_weights", check_weight_loading, "weight_loading: Generation.logp after load_policy_weights"),
    ],
)
def test_suite_catches_a_faulty_engine(fault, check, match):
    """An engine that ignores the references, or the weights it is sent, fails the matching check."""
    with pytest.raises(AssertionError, match=match):
        check(lambda context: _Faulty(_Faulty.Config(fault=fault), context))
