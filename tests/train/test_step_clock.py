"""One step clock for the combiner: with several optimiser steps per loop step (PPO epochs × minibatches), a
scheduled combiner's α in the training forward is the α the rollouts were sampled and scored at."""

from __future__ import annotations

import json

from lmix_core.recipe import load_recipe
from lmix_core.synthetic.model import save_tiny_model_dir
from lmix_core.train.objective import StepObjective
from lmix_core.train.run import train
from lmix_hf.backend import HFBackend
from tests.train.helpers import write_recipe

E, M = 2, 2  # ppo_epochs, minibatches


def test_first_inner_update_of_a_scheduled_weighted_mix_has_ratio_one(tiny_run_inputs, tmp_path, monkeypatch):
    """``weighted`` (policy and a different reference) with α going 0.9 → 0.1 linearly over 4 loop steps, 2 PPO epochs × 2 minibatches: at loop step 1
    the rollouts and old log-probs are at α(1) = 0.7. The first inner update has not changed the parameters since
    that scoring pass, so π_mix/π_old must be 1 on every response token (it was α(4) = 0.1 in the training forward
    when the optimiser-step counter drove the combiner). The learning rate still counts optimiser steps."""
    calls: list[dict] = []
    real_step, real_rl = HFBackend.train_step, StepObjective._rl

    def train_step(self, groups, objective, /, **kw):
        calls.append({"kw": kw, "dlogp": []})
        return real_step(self, groups, objective, **kw)

    def rl(self, stats, batch):
        old = batch.tensors["old_logp"]  # [n, S]
        m = batch.tokens.loss_mask  # [n, S]
        calls[-1]["dlogp"].append(float(((stats.logp.detach() - old).abs() * m).max()))
        return real_rl(self, stats, batch)

    monkeypatch.setattr(HFBackend, "train_step", train_step)
    monkeypatch.setattr(StepObjective, "_rl", rl)
    ref = save_tiny_model_dir(
        tmp_path / "ref", arch="qwen2", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, seed=1
    )
    body = (
        f"references = [{json.dumps(str(ref))}]\n"
        '[combiner]\ntype = "weighted"\nalpha_start = 0.9\nalpha_end = 0.1\nschedule = "linear"\n'
        "schedule_steps = 4\n"
        # a length-dependent reward, so that advantages are not all 0 and the inner updates move the policy
        '[[rewards]]\ntype = "overlong"\nmax_len = 12\ncache_len = 11\n'
    )
    recipe = write_recipe(
        tmp_path / "r.toml",
        tiny_run_inputs,
        body,
        steps=2,
        extra_train=f"ppo_epochs = {E}\nminibatches = {M}",
    )
    train(load_recipe(recipe), tmp_path / "run", quiet=True)
    assert len(calls) == 2 * E * M
    assert [c["kw"] for c in calls] == [
        {"step": s, "lr_step": s * E * M + i} for s in range(2) for i in range(E * M)
    ]
    firsts = [calls[s * E * M] for s in range(2)]
    for c in firsts:
        # measured exactly 0; the tolerance only allows for a different padding width between the two forwards
        assert c["dlogp"] and max(c["dlogp"]) < 1e-6, c["dlogp"]
    # the later inner updates of step 1 do see a moved policy (the check above is not vacuous)
    assert max(d for c in calls[E * M + 1 :] for d in c["dlogp"]) > 1e-4
