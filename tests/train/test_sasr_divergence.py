"""SASR's divergence term with a combiner that loads no reference: the run loads the initial policy for it."""

from __future__ import annotations

import json

import pytest

from lmix_core.mixers.sasr import SASR, sft_probability
from lmix_core.recipe import load_recipe
from lmix_core.train.run import train
from tests.train.helpers import write_recipe


def test_divergence_is_measured_with_the_policy_combiner(tiny_run_inputs, tmp_path, monkeypatch):
    """``policy`` combiner, ``ppo_clip`` without KL, ``sasr`` with λ = 2: step 0 is the SFT warm-up (it moves the
    policy away from the initial model), step 1 is GRPO (γ = 100 makes p ≈ 0.01). The loop must report the KL of
    step 1's rollouts to the initial policy, logged as ``kl_ref``, non-zero, and SASR's p at step 2 must include
    λ·D."""
    seen = []
    real_observe = SASR.observe

    def observe(self, feedback):
        real_observe(self, feedback)
        seen.append((feedback, self.sft_probability()))

    monkeypatch.setattr(SASR, "observe", observe)
    recipe = write_recipe(
        tmp_path / "r.toml",
        tiny_run_inputs,
        '[mixer]\ntype = "sasr"\nwarmup_steps = 1\ngamma = 100.0\ndivergence_coef = 2.0\nseed = 1\n',
        steps=2,
    )
    train(load_recipe(recipe), tmp_path / "run", quiet=True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["decision"] for r in lines] == ["sft", "grpo"]
    (fb0, _), (fb1, p2) = seen
    assert fb0.kl_to_initial is None  # an SFT step samples nothing
    assert fb1.kl_to_initial == pytest.approx(lines[1]["kl_ref"], abs=1e-9)
    assert abs(fb1.kl_to_initial) > 1e-6
    g_w = fb0.grad_norm_sft
    assert p2 == pytest.approx(sft_probability("ratio", g_w, g_w, 100.0, fb1.kl_to_initial, 2.0), abs=1e-12)
