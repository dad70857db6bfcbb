"""The shipped recipe recipes/megatron_tiny_tp2_pp2.toml: validates, and trains end to end under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.megatron, pytest.mark.distributed]

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "megatron_tiny_tp2_pp2.toml"


def test_recipe_validates() -> None:
    """`lmix validate` accepts the recipe (megatron backend, logit averaging, GRPO) with exit status 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "lmix", "validate", str(RECIPE)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "backend=megatron" in proc.stdout


@pytest.mark.slow
def test_recipe_trains_two_steps_on_four_cpu_processes(tmp_path: Path) -> None:
    """torchrun --nproc_per_node 4 -m lmix run on the recipe (2 steps, tiny overrides) writes 2 metrics lines and
    an HF model that transformers loads."""
    from lmix_core.demo.command import build_inputs

    inputs = build_inputs(tmp_path / "inputs", 0)
    out = tmp_path / "run"
    overrides = [
        f"backend.model={json.dumps(str(inputs['base']))}",
        f"data.train={json.dumps(str(inputs['train']))}",
        f"data.eval={json.dumps(str(inputs['eval']))}",
        "train.steps=2",
        "train.prompts_per_step=2",
        "train.group_size=4",
        "sampling.max_new_tokens=12",
        "eval.max_examples=8",
        'logging.wandb="disabled"',
        "logging.progress=false",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "-m", "lmix",
           "run", str(RECIPE), *overrides, "--out", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert model.config.model_type == "qwen2"
