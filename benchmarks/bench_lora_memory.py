"""Peak memory and step time of logit-average GRPO: full fine-tuning with a separate reference versus LoRA.

Model: random-init Qwen2 of about 100M parameters (vocabulary 32,768, hidden 768, 10 layers, 12 query / 2 key-value
heads, intermediate 2,816, tied embeddings, float32), written once to a temporary directory. Each configuration runs
``lmix run``'s training loop (``lmix_core.train.run.train``) in a fresh Python process on the demo task's prompts
(2 prompts × 8 completions per step, 32 new tokens, ``logit_average`` with α = 0.5, ``grpo``, one optimiser step per
batch, ``micro_batch_size = 16``, CPU):

- ``full``: every weight trains (AdamW moments for all of them); the reference is a second copy of the model,
  loaded from the same directory (``backend.references`` defaults to ``backend.model``);
- ``lora``: rank-16 adapters on every linear layer of the decoder (``backend.lora_rank = 16``); the reference is the
  policy with its adapters left out (:mod:`lmix_hf.lora`: one copy of the weights);
- ``lora_separate_ref`` (only with ``--configs`` naming it): LoRA, but the reference is loaded from a copy of the model
  directory, which isolates the saving of the adapter-free reference from the saving of LoRA's optimiser state.

Peak memory is the process's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``) at the end of the
run; the reward worker processes are not counted (they are the same in every configuration). ``baseline`` is the
same process's resident set (``VmRSS``) after importing torch, transformers, peft and lmix, before any model is
loaded. Step time is the median ``step_time_s`` after the first step (``--steps`` steps in all); it depends on the machine's
load, which is printed before and after each configuration. ``--recompute`` sets ``backend.recompute = "full"``
(activation checkpointing) in every configuration.

Usage:
    .venv/bin/python benchmarks/bench_lora_memory.py [--steps 3] [--threads 2] [--configs full,lora] [--recompute]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(
    arch="qwen2",
    vocab_size=32768,
    hidden_size=768,
    num_layers=10,
    num_heads=12,
    num_kv_heads=2,
    intermediate_size=2816,
    tie_word_embeddings=True,
    max_position_embeddings=1024,
)
PROMPTS, GROUP, NEW_TOKENS, LORA_RANK = 2, 8, 32, 16
CONFIGS = ("full", "lora", "lora_separate_ref")


def memory_mib(field: str) -> float:
    """``VmHWM`` (the resident-set high-water mark) or ``VmRSS`` (the resident set now) of this process, in MiB.

    ``VmHWM`` belongs to the process's address space, which ``exec`` replaces, so it starts afresh in a child;
    ``getrusage``'s ``ru_maxrss`` survives ``exec`` and would include the parent's resident set at the fork.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the closest figure


def make_inputs(root: Path) -> dict[str, Path]:
    from lmix_core.demo.task import generate, write_jsonl
    from lmix_core.synthetic.model import save_tiny_model_dir

    model = save_tiny_model_dir(root / "model", seed=0, **SHAPE)
    copy = root / "model_copy"
    shutil.copytree(model, copy)
    return {
        "model": model,
        "copy": copy,
        "train": write_jsonl(root / "train.jsonl", generate(64, levels=(1,), seed=0)),
    }


def recipe_text(config: str, inputs: dict[str, Path], steps: int, recompute: bool) -> str:
    backend = f"model = {json.dumps(str(inputs['model']))}\n"
    if recompute:
        backend += 'recompute = "full"\n'
    if config != "full":
        backend += f"lora_rank = {LORA_RANK}\nlora_alpha = {2 * LORA_RANK}\n"
    if config == "lora_separate_ref":
        backend += f"references = [{json.dumps(str(inputs['copy']))}]\n"
    return f"""schema = 1
[backend]
type = "hf"
device = "cpu"
lr = 1e-5
micro_batch_size = {PROMPTS * GROUP}
{backend}
[combiner]
type = "logit_average"
alpha = 0.5
[advantage]
type = "grpo"
[[rewards]]
type = "math"
[train]
steps = {steps}
prompts_per_step = {PROMPTS}
group_size = {GROUP}
[sampling]
max_new_tokens = {NEW_TOKENS}
[data]
train = {json.dumps(str(inputs["train"]))}
[logging]
wandb = "disabled"
progress = false
"""


def child(config: str, root: Path, steps: int, threads: int, recompute: bool) -> None:
    """Run one configuration in this (fresh) process and print one JSON line."""
    import peft  # noqa: F401 - imported before the baseline so both configurations count the same libraries
    import torch
    import transformers  # noqa: F401

    from lmix_core.recipe import load_recipe
    from lmix_core.train.run import train

    if threads:
        torch.set_num_threads(threads)
    baseline = memory_mib("VmRSS")
    inputs = {k: root / v for k, v in (("model", "model"), ("copy", "model_copy"), ("train", "train.jsonl"))}
    recipe = root / f"{config}.toml"
    recipe.write_text(recipe_text(config, inputs, steps, recompute))
    out = root / f"run-{config}"
    t0 = time.perf_counter()
    train(load_recipe(recipe), out, quiet=True)
    wall = time.perf_counter() - t0
    peak = memory_mib("VmHWM")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records]
    print(
        json.dumps(
            {
                "config": config,
                "recompute": recompute,
                "peak_rss_mib": round(peak, 1),
                "baseline_rss_mib": round(baseline, 1),
                "step_time_s": [round(t, 3) for t in times],
                "median_step_s": round(statistics.median(times[1:] or times), 3),
                "wall_s": round(wall, 1),
                "torch_threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


def parameter_counts(model_dir: Path) -> dict[str, int]:
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    total = sum(p.numel() for p in model.parameters())
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules="all-linear")
    )
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    return {"parameters": total, "lora_trainable": trainable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--configs", default="full,lora", help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument(
        "--recompute", action="store_true", help='backend.recompute = "full" in every configuration'
    )
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.steps, args.threads, args.recompute)
        return
    if args.prepare:
        inputs = make_inputs(args.root)
        print(json.dumps({"model": SHAPE, **parameter_counts(inputs["model"])}), flush=True)
        return
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    with tempfile.TemporaryDirectory(prefix="lmix-lora-mem-") as tmp:
        root = Path(tmp)
        # the model is written and counted in a child too, so this process stays small when it forks the others
        prep = [sys.executable, __file__, "--prepare", "--root", str(root)]
        print(subprocess.run(prep, capture_output=True, text=True, check=True).stdout.strip(), flush=True)
        results = {}
        for config in configs:
            load_before = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--child", config, "--root", str(root)]
            cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
            cmd += ["--recompute"] if args.recompute else []
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"}
            )
            if proc.returncode != 0:
                sys.exit(f"configuration {config} failed:\n{proc.stderr[-4000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            results[config] = result
            print(json.dumps(result), flush=True)
        if "full" in results and "lora" in results:
            full, lora = results["full"], results["lora"]
            print(
                json.dumps(
                    {
                        "lora_over_full_peak": round(lora["peak_rss_mib"] / full["peak_rss_mib"], 3),
                        "lora_over_full_peak_above_baseline": round(
                            (lora["peak_rss_mib"] - lora["baseline_rss_mib"])
                            / (full["peak_rss_mib"] - full["baseline_rss_mib"]),
                            3,
                        ),
                        "lora_over_full_step_time": round(lora["median_step_s"] / full["median_step_s"], 3),
                    }
                )
            )


if __name__ == "__main__":
    main()
