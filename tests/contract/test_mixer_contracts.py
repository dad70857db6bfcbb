"""Every registered mixer (built-in or plugin) passes ``check_mixer``; the suite itself catches broken mixers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, final

import attrs
import pytest
import torch

from lmix_core import registries
from lmix_core.errors import LmixError
from lmix_core.interfaces.mixer import Mixer
from lmix_core.testing.mixer import check_mixer
from lmix_core.types import MixDecision, MixerInputs, StepFeedback, StepPlan


@pytest.mark.parametrize("name", registries.mixers.names())
def test_registered_mixer_passes_contract_with_defaults(name):
    """The registered mixer, built with its default Config, satisfies the mixer contract."""
    cls = registries.mixers.get(name)
    check_mixer(cls.default)


# Non-default settings that reach the branches the defaults do not reach within the scripted run.
BRANCHES: list[tuple[str, dict[str, Any]]] = [
    ("sequential", {"sft_steps": 5}),
    ("constant", {"mu": 0.0}),
    ("constant", {"mu": 1.0}),
    ("chord", {"warmup_steps": 3, "decay_steps": 6, "mu_peak": 1.0, "mu_valley": 0.0}),
    ("chord", {"token_weighting": "phi", "mu_peak": 0.1, "mu_valley": 0.1, "decay_steps": 0}),
    ("hpt", {"switch_gate": 2}),
    ("hpt", {"switch_gate": -1}),
    ("hpt", {"mode": "soft", "soft_temperature": 2.0}),
    ("sasr", {"warmup_steps": 3, "seed": 4}),
    ("sasr", {"warmup_steps": 2, "p_form": "clipped", "gamma": 0.5, "divergence_coef": 2.0, "seed": 9}),
    ("parallel_average", {"rl_weight": 0.3}),
    ("relift", {"buffer_size": 3}),
    ("relift", {"buffer_size": 2, "sft_step": "joint"}),
]


@pytest.mark.parametrize(("name", "params"), BRANCHES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BRANCHES)])
def test_builtin_mixer_passes_contract_on_every_branch(name, params):
    """Built-in mixers satisfy the contract with non-default settings too."""
    cls = registries.mixers.get(name)
    check_mixer(lambda: cls(cls.Config(**params)))


def test_every_builtin_mixer_name_is_registered():
    """The nine built-in mixers are all registered."""
    builtin = {"rl", "sft", "sequential", "constant", "chord", "hpt", "sasr", "parallel_average", "relift"}
    assert builtin <= set(registries.mixers.names())


# -- the suite catches broken mixers ---------------------------------------------------------------------------


@final
class _Broken(Mixer):
    """A mixer with a switchable defect."""

    @attrs.frozen(kw_only=True)
    class Config:
        defect: str = "none"
        seed: int = 0

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.count = 0
        self.kl = 0.0

    @property
    def needs_reference(self) -> bool:
        return {"needs_reference_int": 1, "declared_kl": True}.get(self.config.defect, False)  # type: ignore[return-value]

    def observe(self, feedback: StepFeedback) -> None:
        if self.config.defect in ("undeclared_kl", "declared_kl") and feedback.kl_to_initial is not None:
            self.kl = feedback.kl_to_initial

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kl": self.kl}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.kl = float(state["kl"])

    def plan(self, step: int) -> StepPlan:
        if self.config.defect == "rl_without_rollouts":
            return StepPlan(rollouts=False, sft=True)
        return StepPlan(rollouts=True, sft=True)

    def mix(self, inputs: MixerInputs) -> MixDecision:
        self.count += 1
        Q = len(inputs.question_ids)
        defect = self.config.defect
        coef = {
            "negative": -0.5,
            "unsaved_state": float(self.count),
            "global_rng": float(torch.rand(())),
            "seeded_rng": float(torch.rand((), generator=self.generator)),
            "undeclared_kl": 1.0 + self.kl,
            "declared_kl": 1.0 + self.kl,
        }.get(defect, 1.0)
        n = Q + 1 if defect == "wrong_length" else Q
        return MixDecision(rl_coef=1.0, sft_coef=coef, rl_weights=(1.0,) * n)

    def sft_token_weights(self, logp: torch.Tensor) -> torch.Tensor:
        if self.config.defect == "grad_in_weights":
            return logp.exp()  # [N, S], carries gradient when logp does
        return torch.ones_like(logp)  # [N, S]


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        ("negative", "finite and >= 0"),
        ("wrong_length", "one per question"),
        ("rl_without_rollouts", "no rollouts"),
        ("unsaved_state", "state_dict"),
        ("global_rng", "different decisions"),
        ("grad_in_weights", "gradient"),
        ("needs_reference_int", "needs_reference must be a bool"),
        ("undeclared_kl", "must declare needs_reference = True"),
    ],
)
def test_check_mixer_catches_defects(defect, message):
    """Each defect makes check_mixer raise an AssertionError naming the broken rule."""
    with pytest.raises(AssertionError, match=message):
        check_mixer(lambda: _Broken(_Broken.Config(defect=defect)))


def test_check_mixer_accepts_a_mixer_that_declares_the_kl_it_reads():
    """A mixer whose decisions follow the reported KL passes once it declares needs_reference = True."""
    check_mixer(lambda: _Broken(_Broken.Config(defect="declared_kl")))


def test_sasr_declares_the_reference_only_with_its_divergence_term():
    """sasr reads the KL only with divergence_coef > 0; both settings pass, and without a KL it refuses to guess."""
    cls = registries.mixers.get("sasr")
    assert cls.default().needs_reference is False
    on = cls(cls.Config(warmup_steps=2, divergence_coef=2.0))
    assert on.needs_reference is True
    check_mixer(cls.default)
    check_mixer(lambda: cls(cls.Config(warmup_steps=2, divergence_coef=2.0)))
    grpo_step = MixDecision(rl_coef=1.0, sft_coef=0.0, rl_weights=(1.0,))
    with pytest.raises(LmixError, match="needs_reference"):
        on.observe(StepFeedback(step=3, decision=grpo_step, kl_to_initial=None))


def test_check_mixer_accepts_seeded_randomness():
    """Randomness drawn from ``self.generator`` is reproducible and saved with the base state_dict."""
    check_mixer(lambda: _Broken(_Broken.Config(defect="seeded_rng", seed=3)))
