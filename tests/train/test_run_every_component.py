"""`lmix run` trains a tiny model with every registered combiner, advantage, loss, mixer and rollout engine (plugins
included)."""

from __future__ import annotations

import json
import math

import pytest

from lmix_core.recipe import load_recipe
from lmix_core.registries import advantages, combiners, losses, mixers, rollout_engines
from lmix_core.train.run import train
from tests.train.helpers import write_recipe

SLOTS = [("combiner", n) for n in combiners.names()]
SLOTS += [("advantage", n) for n in advantages.names()]
SLOTS += [("loss", n) for n in losses.names()]
SLOTS += [("mixer", n) for n in mixers.names()]
SLOTS += [("rollout_engine", n) for n in rollout_engines.names()]


@pytest.mark.parametrize(("slot", "name"), SLOTS, ids=[f"{s}-{n}" for s, n in SLOTS])
def test_two_steps_train_and_write_the_run_directory(slot, name, tiny_run_inputs, tmp_path, monkeypatch):
    """Two steps run, metrics.jsonl has one finite line per step, the final model and summary are written; every
    combiner's training forward went through the shared-prompt path (the HF backend's default)."""
    import lmix_hf.token_stats

    shared = []
    original = lmix_hf.token_stats.shared_hidden
    monkeypatch.setattr(
        lmix_hf.token_stats, "shared_hidden", lambda *a, **k: shared.append(1) or original(*a, **k)
    )
    recipe = write_recipe(tmp_path / "r.toml", tiny_run_inputs, f'[{slot}]\ntype = "{name}"\n')
    out = tmp_path / "run"
    summary = train(load_recipe(recipe), out, quiet=True)
    if slot == "combiner":
        assert shared, "the shared-prompt training forward did not run"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1]
    for r in lines:
        assert math.isfinite(r["loss"]) and not r["skipped"]
        assert {"step_time_s", "decision", "grad_norm"} <= r.keys()
    assert (out / "model" / "config.json").exists()
    assert (out / "recipe.toml").exists() and (out / "provenance.json").exists()
    assert 0.0 <= summary["final_eval"]["pass@1"] <= 1.0


COMBINERS, MIXERS = combiners.names(), mixers.names()
LORA_PAIRS = [
    (COMBINERS[i % len(COMBINERS)], MIXERS[i % len(MIXERS)]) for i in range(max(len(COMBINERS), len(MIXERS)))
]


@pytest.mark.parametrize(("combiner", "mixer"), LORA_PAIRS, ids=[f"{c}-{m}" for c, m in LORA_PAIRS])
def test_lora_policy_trains_with_every_combiner_and_mixer(combiner, mixer, tiny_run_inputs, tmp_path):
    """A LoRA policy (references: the policy with its adapters disabled) takes one step under every combiner and
    every mixer (paired up, so each appears at least once), and exports the merged model."""
    body = f'lora_rank = 4\nlora_alpha = 8\n[combiner]\ntype = "{combiner}"\n[mixer]\ntype = "{mixer}"\n'
    recipe = write_recipe(tmp_path / "r.toml", tiny_run_inputs, body, steps=1)
    out = tmp_path / "run"
    train(load_recipe(recipe), out, quiet=True)
    (line,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(line["loss"]) and not line["skipped"]
    assert (out / "model" / "config.json").exists() and (out / "model" / "model.safetensors").exists()


@pytest.mark.parametrize(("combiner", "mixer"), LORA_PAIRS, ids=[f"{c}-{m}" for c, m in LORA_PAIRS])
def test_fsdp_policy_trains_with_every_combiner_and_mixer(combiner, mixer, tiny_run_inputs, tmp_path):
    """Under FSDP (one process: a one-rank group; parameters, references and optimiser state are DTensors) one step
    runs under every combiner and every mixer (paired up) and exports an ordinary HF directory."""
    body = f'parallel = "fsdp"\n[combiner]\ntype = "{combiner}"\n[mixer]\ntype = "{mixer}"\n'
    recipe = write_recipe(tmp_path / "r.toml", tiny_run_inputs, body, steps=1)
    out = tmp_path / "run"
    train(load_recipe(recipe), out, quiet=True)
    (line,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(line["loss"]) and not line["skipped"]
    assert (out / "model" / "config.json").exists() and (out / "model" / "model.safetensors").exists()
