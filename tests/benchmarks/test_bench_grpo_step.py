"""``benchmarks/bench_grpo_step.py``: the reference workload's model and prompts, and lmix's parts and the floor at
one step each (timing itself is not tested)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_grpo_step.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_grpo_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_workload_and_parts(tmp_path):
    """4,002,048 parameters (intermediate 704), prompts of exactly 6 tokens; lmix's step holds its parts; the
    floor's training step and decode loop run."""
    bench = _bench()
    model_dir = bench.make_model(tmp_path)
    config = AutoModelForCausalLM.from_pretrained(model_dir).config
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (2048, 256, 704)
    # embeddings and head 2·2048·256, per layer q/k/v/o with q/k/v biases, the MLP and two norms, the final norm
    layer = 256 * 256 + 256 + 2 * (256 * 128 + 128) + 256 * 256 + 3 * 256 * 704 + 2 * 256
    assert (
        sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        == (2 * 2048 * 256 + 4 * layer + 256)
        == 4_002_048
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = bench.make_prompts(tok, 6)
    assert len(set(prompts)) == 2 and all(
        len(tok(p, add_special_tokens=False)["input_ids"]) == 6 for p in prompts
    )
    r = bench.bench_lmix(model_dir, prompts, 4, 2, "cpu", tmp_path, "auto")
    assert len(r["step"]) == 2 and r["scoring"] == [0.0, 0.0]
    for i in range(2):
        assert 0 < r["sampling"][i] and 0 < r["train"][i] and r["other"][i] >= 0
        assert math.isclose(r["step"][i], r["sampling"][i] + r["train"][i] + r["other"][i])
    assert 0 < r["completion_tokens"] <= 4
    floor = bench.bench_floor(model_dir, 6, 4, 1, "cpu")
    assert floor["floor_train"][0] > 0 and floor["floor_decode"][0] > 0
