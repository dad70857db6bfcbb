"""``train.kl_in_reward_coef``: the advantage estimator sees r − β·Σ_t KL_t to the reference, loaded for it."""

from __future__ import annotations

import json

import torch

from lmix_core.advantages.grpo import GRPO
from lmix_core.recipe import load_recipe
from lmix_core.synthetic.model import save_tiny_model_dir
from lmix_core.train.components import RewardSuite
from lmix_core.train.run import train
from lmix_hf.backend import HFBackend
from tests.train.helpers import write_recipe

BETA = 0.5


def test_advantage_reads_rewards_minus_beta_times_summed_k3(tiny_run_inputs, tmp_path, monkeypatch):
    """Policy combiner and a loss without KL term, so only the reward penalty asks for a reference: the backend
    loads it (the loop scores the rollouts against it), and the estimator's rewards are the verifiers' minus
    β·Σ_t k3(log π_old, log π_ref) over each response, k3 written out here as e^δ − δ − 1, δ = log π_ref − log π."""
    seen: dict[str, list] = {"gen": [], "stats": [], "scored": [], "adv_in": []}
    real_gen, real_stats = HFBackend.generate, HFBackend.score
    real_score, real_adv = RewardSuite.score, GRPO.__call__

    def generate(self, request, /):
        out = real_gen(self, request)
        seen["gen"].append(out)
        return out

    def stats(self, batch, /, **kw):
        out = real_stats(self, batch, **kw)
        if kw.get("ref_logp"):
            seen["stats"].append(out)
        return out

    def score(self, *a, **kw):
        out = real_score(self, *a, **kw)
        seen["scored"].append(out.rewards.clone())
        return out

    def adv(self, inputs, /):
        seen["adv_in"].append(inputs.rewards.clone())
        return real_adv(self, inputs)

    monkeypatch.setattr(HFBackend, "generate", generate)
    monkeypatch.setattr(HFBackend, "score", stats)
    monkeypatch.setattr(RewardSuite, "score", score)
    monkeypatch.setattr(GRPO, "__call__", adv)
    ref = save_tiny_model_dir(
        tmp_path / "ref", arch="qwen2", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, seed=1
    )
    recipe = write_recipe(
        tmp_path / "r.toml",
        tiny_run_inputs,
        f"references = [{json.dumps(str(ref))}]\n",
        steps=1,
        extra_train=f'kl_in_reward_coef = {BETA}\nkl_in_reward_estimator = "k3"',
    )
    train(load_recipe(recipe), tmp_path / "run", quiet=True)
    gen, st = seen["gen"][0], seen["stats"][0]  # the policy combiner samples without the reference: scored
    assert st.ref_logp is not None  # the reference was loaded for the penalty alone
    delta = (st.ref_logp - st.logp).double()  # [N, S]
    k3 = torch.exp(delta) - delta - 1.0  # [N, S]
    penalty = (k3 * gen.tokens.loss_mask).sum(-1)  # [N]
    assert float(penalty.min()) > 1e-3  # a different reference: the penalty is not trivially 0
    expected = seen["scored"][0].double() - BETA * penalty  # [N]
    torch.testing.assert_close(seen["adv_in"][0].double(), expected, rtol=0, atol=1e-5)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(record["reward_kl_penalty"] - BETA * float(penalty.mean())) < 1e-5
