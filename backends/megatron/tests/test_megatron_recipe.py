"""The shipped recipe recipes/megatron_tiny_tp2_pp2.toml through the real CLI: `lmix validate`, and
`torchrun --nproc_per_node 4 -m lmix run` (train, checkpoint, export, `--resume`) on 4 gloo processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.megatron, pytest.mark.distributed]

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "megatron_tiny_tp2_pp2.toml"


def test_recipe_validates() -> None:
    """`lmix validate` accepts the recipe (megatron backend, logit averaging, GRPO) with exit status 0 (--no-data:
    its data is what `lmix demo` writes, which need not exist yet)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lmix", "validate", "--no-data", str(RECIPE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backend=megatron" in proc.stdout


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's data files and an untrained tiny base model (``lmix demo``'s inputs, seed 0)."""
    from lmix_core.demo.command import build_inputs

    return build_inputs(tmp_path_factory.mktemp("inputs"), 0)


def lmix_run(
    inputs: dict[str, Path], out: Path, *extra: str, resume: bool = False
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 4 -m lmix run RECIPE`` with tiny overrides, into ``out``."""
    overrides = [
        f"backend.model={json.dumps(str(inputs['base']))}",
        f"data.train={json.dumps(str(inputs['train']))}",
        f"data.eval={json.dumps(str(inputs['eval']))}",
        "train.prompts_per_step=2",
        "train.group_size=4",
        "sampling.max_new_tokens=12",
        "eval.max_examples=8",
        'logging.wandb="disabled"',
        "logging.progress=false",
        *extra,
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "-m", "lmix",
           "run", str(RECIPE), *overrides, "--out", str(out), *(["--resume"] if resume else [])]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=out.parent)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_recipe_trains_two_steps_on_four_cpu_processes(inputs: dict[str, Path], tmp_path: Path) -> None:
    """2 steps write 2 metrics lines, a summary and an HF model that transformers loads; only global rank 0 prints
    the run's output."""
    out = tmp_path / "run"
    proc = lmix_run(inputs, out, "train.steps=2")
    assert [m["step"] for m in metrics(out)] == [0, 1]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert proc.stdout.count("lmix run: backend=megatron") == 1
    assert proc.stdout.count("lmix run: done in") == 1
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert model.config.model_type == "qwen2"


#: an SFT share makes the loss and gradients non-zero on the untrained model (whose RL rewards are all 0)
MIXED = (
    'mixer.type="constant"',
    "mixer.mu=0.5",
    "train.steps=3",
    "train.save_every=1",
    "train.keep_checkpoints=3",
)


@pytest.mark.slow
def test_lmix_run_resume_continues_like_the_uninterrupted_run(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    """A 3-step run checkpoints after every step. A copy of its directory cut back to the checkpoint after step 2
    (what a job killed during step 3 leaves) continues with `lmix run --resume`: step 2 is redone with the same
    rollouts, loss, gradient norm and KL as the uninterrupted run, and the final models are equal."""
    import transformers

    full = tmp_path / "full"
    lmix_run(inputs, full, *MIXED)
    a = metrics(full)
    assert a[-1]["grad_norm"] > 0 and a[-1]["kl_ref"] != 0.0  # the weights did move

    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_000003")
    shutil.rmtree(cut / "model")
    (cut / "summary.json").unlink()  # written last: a job killed during step 3 has none
    (cut / "checkpoints" / "latest").write_text("step_000002\n")
    lmix_run(inputs, cut, *MIXED, resume=True)
    b = metrics(cut)
    assert [m["step"] for m in b] == [0, 1, 2]
    assert b[:2] == a[:2]  # the lines as written, step_time_s included: steps 0 and 1 were not run again
    for key in ("tokens", "response_len", "prefix_tokens", "reward_mean"):
        assert b[2][key] == a[2][key], key
    for key in ("loss", "grad_norm", "kl_ref", "entropy"):
        assert b[2][key] == pytest.approx(a[2][key], rel=1e-5, abs=1e-6), key

    wa = transformers.AutoModelForCausalLM.from_pretrained(str(full / "model")).state_dict()
    wb = transformers.AutoModelForCausalLM.from_pretrained(str(cut / "model")).state_dict()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-6
