"""The KL-to-reference metric comes from the sampler's own log-probs when nothing else needs a scoring pass."""

from __future__ import annotations

import json
import math

import pytest

from lmix_core.recipe import load_recipe
from lmix_core.train.run import train
from lmix_hf.backend import HFBackend
from tests.train.helpers import write_recipe


@pytest.mark.parametrize(("ppo_epochs", "scored"), [(1, False), (2, True)])
def test_kl_ref_is_logged_with_or_without_a_scoring_pass(
    ppo_epochs, scored, tiny_run_inputs, tmp_path, monkeypatch
):
    """logit_average with one optimiser step per batch: no ``score(ref_logp=True)`` call, and ``kl_ref`` is still
    logged: 0 at step 0, where the policy is its own reference, and non-zero once the SFT half of the ``constant``
    mix has moved the policy. With two PPO epochs the loop scores the batch (old log-probs) and takes ``kl_ref``
    from that pass."""
    calls = []
    real_score = HFBackend.score

    def counting_score(self, batch, /, **kw):
        calls.append(kw.get("ref_logp", False))
        return real_score(self, batch, **kw)

    monkeypatch.setattr(HFBackend, "score", counting_score)
    recipe = write_recipe(
        tmp_path / "r.toml",
        tiny_run_inputs,
        '[combiner]\ntype = "logit_average"\n[mixer]\ntype = "constant"\n',
        steps=3,
        extra_train=f"ppo_epochs = {ppo_epochs}",
    )
    train(load_recipe(recipe), tmp_path / "run", quiet=True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert (True in calls) is scored
    assert all(math.isfinite(r["kl_ref"]) for r in lines)
    assert abs(lines[0]["kl_ref"]) < 1e-4
    assert abs(lines[-1]["kl_ref"]) > 1e-6
