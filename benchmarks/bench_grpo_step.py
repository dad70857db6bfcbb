"""GRPO step time: lmix versus TRL's GRPOTrainer on the same workload, same machine, same run.

Workload: random-init Qwen2 with vocab 2048, hidden 256, 4 layers (~4M parameters); 16 completions of
32 new tokens per step, 8 per prompt; no KL. Both sides sample exactly 32 tokens (EOS suppressed by a reward-free
tokenizer setup: the prompts never lead to EOS early at random init, and both are capped at 32).

Usage:
    .venv/bin/python benchmarks/bench_grpo_step.py [--steps 12] [--threads 1] [--which both|lmix|trl]

Prints the median step time of each (after 2 warm-up steps) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

VOCAB, HIDDEN, LAYERS, HEADS, KV = 2048, 256, 4, 4, 2
PROMPTS = ["Compute 12+34.", "What is 7*8?"]


def make_model(root: Path) -> Path:
    from lmix_core.synthetic.model import save_tiny_model_dir

    return save_tiny_model_dir(
        root / "model",
        arch="qwen2",
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        num_heads=HEADS,
        num_kv_heads=KV,
        vocab_size=VOCAB,
        seed=0,
    )


def reward(completions, **kwargs):  # noqa: ANN001, ANN201 - TRL's reward-function signature
    return [float(len(c) % 3) for c in completions]


def bench_trl(model_dir: Path, steps: int) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            times.append(time.perf_counter() - self.t)

    data = Dataset.from_list([{"prompt": PROMPTS[i % 2]} for i in range(2 * steps + 4)])
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=16,
            num_generations=8,
            max_completion_length=32,
            beta=0.0,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            logging_steps=1000,
            disable_tqdm=True,
            max_steps=steps,
            temperature=1.0,
            learning_rate=1e-5,
            bf16=False,
            dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(
            model=model,
            processing_class=tok,
            reward_funcs=reward,
            args=cfg,
            train_dataset=data,
            callbacks=[Timer()],
        )
        trainer.train()
    return times


def bench_lmix(model_dir: Path, steps: int, root: Path) -> list[float]:
    from lmix_core.recipe import load_recipe
    from lmix_core.train.run import train

    data = root / "prompts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": PROMPTS[i % 2], "answer": "0", "solution": "0"}) + "\n" for i in range(64)
        )
    )
    recipe = root / "bench.toml"
    recipe.write_text(
        f"""schema = 1
[backend]
type = "hf"
model = {json.dumps(str(model_dir))}
lr = 1e-5
micro_batch_size = 16
[combiner]
type = "policy"
[advantage]
type = "grpo"
[loss]
type = "ppo_clip"
[[rewards]]
type = "exact_match"
[train]
steps = {steps}
prompts_per_step = 2
group_size = 8
[sampling]
max_new_tokens = 32
[data]
train = {json.dumps(str(data))}
chat_template = "none"  # TRL gets plain-string prompts, so no chat template on either side
[logging]
wandb = "disabled"
progress = false
"""
    )
    out = root / "run"
    train(load_recipe(recipe), out, quiet=True)
    return [json.loads(line)["step_time_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--which", choices=["both", "lmix", "trl"], default="both")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="lmix-bench-grpo-"))
    model_dir = make_model(root)
    result = {"threads": torch.get_num_threads(), "steps": args.steps}
    for name, fn in (
        ("lmix", lambda: bench_lmix(model_dir, args.steps, root)),
        ("trl", lambda: bench_trl(model_dir, args.steps)),
    ):
        if args.which in ("both", name):
            times = fn()[2:]
            result[f"{name}_median_s"] = statistics.median(times)
    if "lmix_median_s" in result and "trl_median_s" in result:
        result["ratio_lmix_over_trl"] = result["lmix_median_s"] / result["trl_median_s"]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
