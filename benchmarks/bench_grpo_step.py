"""GRPO step time: lmix, its parts, the machine's floor and TRL's GRPOTrainer, on one workload, in one run.

Model: random-init Qwen2, vocabulary 2048, hidden 256, 4 layers, 4 query / 2 key-value heads, intermediate 704,
float32 (4.0M parameters). Workloads (2 prompts × 8 completions per step, no KL, one optimiser step per batch):

- ``reference``: 6-token prompts, 32 new tokens;
- ``prompt-heavy``: 256-token prompts, 128 new tokens.

Both trainers get the same plain-string prompts (no chat template) and sample up to the same number of tokens; at
random init an end-of-sequence token is rare (about 1 in 1000 per token), and the mean completion length of each side
is printed.

Each round runs, one after the other: lmix with the shared-prompt forward (``backend.shared_prompt = "auto"``),
lmix without it (``"off"``), the floor, and TRL; ``--rounds`` rounds interleave them, so a change in the machine's
load reaches every side. Per round and side the median step after ``--warmup`` steps is kept; the report gives the
median over rounds. The floor, with no library code around the model:

- ``floor_train``: transformers ``model(input_ids)`` on the step's ``[16, prompt + new]`` tokens, log-softmax of the
  logits at the completion tokens, an advantage-weighted mean, ``backward()`` and ``torch.optim.AdamW.step()``;
- ``floor_decode``: the prompt pass and ``new`` one-token steps of transformers' forward with its ``DynamicCache``
  over the step's 16 rows, feeding fixed tokens (no sampling, no stopping).

lmix's parts come from timing the backend's calls inside the real training loop: ``sampling`` (``generate``),
``scoring`` (``score``, not called with one optimiser step per batch and no KL) and ``train`` (``train_step``:
forward, backward, gradient clipping and AdamW); ``other`` is the rest of the step (rewards, advantages, the
loop). TRL's step is timed by a ``TrainerCallback`` around each optimiser step (generation included).

Usage:
    .venv/bin/python benchmarks/bench_grpo_step.py [--workload reference|prompt-heavy|both] [--rounds 3]
        [--steps 8] [--warmup 2] [--threads 1] [--device cpu|cuda]

``--threads`` sets torch's CPU threads (a CPU-only setting; 0 leaves torch's default). On CUDA every timer
synchronises the device before reading the clock.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

VOCAB, HIDDEN, LAYERS, HEADS, KV, INTERMEDIATE = 2048, 256, 4, 4, 2, 704
PROMPTS, GROUP = 2, 8
WORKLOADS = {"reference": (6, 32), "prompt-heavy": (256, 128)}  # (prompt tokens, new tokens)
TRAINERS = ("lmix", "lmix_unshared", "floor", "trl")


#: The timer: wall time (``--clock wall``) or the process's CPU time (``--clock cpu``).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = [time.perf_counter]


def clock() -> float:
    return _clock[0]()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_model(root: Path) -> Path:
    from lmix_core.synthetic.model import save_tiny_model_dir

    return save_tiny_model_dir(
        root / "model",
        arch="qwen2",
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        num_heads=HEADS,
        num_kv_heads=KV,
        intermediate_size=INTERMEDIATE,
        vocab_size=VOCAB,
        seed=0,
    )


def make_prompts(tokenizer: Any, length: int) -> list[str]:
    """``PROMPTS`` distinct plain strings of exactly ``length`` tokens (letters and digits added one at a time)."""
    rng = random.Random(length)
    out: list[str] = []
    while len(out) < PROMPTS:
        text = ""
        while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < length:
            text += rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 +=?")
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == length and text not in out:
            out.append(text)
    return out


def reward(completions, **kwargs):  # noqa: ANN001, ANN201 - TRL's reward-function signature
    return [float(len(c) % 3) for c in completions]


# -- TRL ---------------------------------------------------------------------------------------------------------
def bench_trl(model_dir: Path, prompts: list[str], new: int, steps: int, device: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    times: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            sync(device)
            self.t = clock()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            sync(device)
            times.append(clock() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001, ANN201
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    data = Dataset.from_list([{"prompt": prompts[i % PROMPTS]} for i in range(PROMPTS * (steps + 2))])
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=PROMPTS * GROUP,
            num_generations=GROUP,
            max_completion_length=new,
            beta=0.0,
            use_cpu=device == "cpu",
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            max_steps=steps,
            temperature=1.0,
            learning_rate=1e-5,
            bf16=False,
            dataloader_num_workers=0,
            gradient_checkpointing=False,  # TRL 1.16 enables it by default; lmix does not recompute activations
            shuffle_dataset=False,
        )
        trainer = GRPOTrainer(
            model=model,
            processing_class=tok,
            reward_funcs=reward,
            args=cfg,
            train_dataset=data,
            callbacks=[Timer()],
        )
        trainer.remove_callback(PrinterCallback)  # logging_steps=1 feeds the Timer's lengths, not stdout
        trainer.train()
    return {"step": times, "completion_tokens": statistics.mean(lengths) if lengths else float("nan")}


# -- lmix --------------------------------------------------------------------------------------------------------
class _Parts:
    """Times the backend's calls inside the loop (a benchmark-only wrapper around the class's methods)."""

    NAMES = {"generate": "sampling", "score": "scoring", "train_step": "train", "step": "step"}

    def __init__(self, device: str) -> None:
        self.device = device
        self.calls: list[tuple[str, float]] = []

    def wrap(self, cls: type, names: tuple[str, ...]) -> dict[str, Callable]:
        originals = {name: getattr(cls, name) for name in names}
        for name, fn in originals.items():
            setattr(cls, name, self._timed(self.NAMES[name], fn))
        return originals

    def _timed(self, part: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            sync(self.device)
            t = clock()
            out = fn(*args, **kwargs)
            sync(self.device)
            self.calls.append((part, clock() - t))
            return out

        return timed


def bench_lmix(
    model_dir: Path, prompts: list[str], new: int, steps: int, device: str, root: Path, shared: str
) -> dict[str, Any]:
    from lmix_core.recipe import load_recipe
    from lmix_core.train.loop import Trainer
    from lmix_core.train.run import train
    from lmix_hf.backend import HFBackend

    data = root / "prompts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": prompts[i % PROMPTS], "answer": "0", "solution": "0"}) + "\n"
            for i in range(64)
        )
    )
    recipe = root / f"bench-{shared}.toml"
    recipe.write_text(
        f"""schema = 1
[backend]
type = "hf"
model = {json.dumps(str(model_dir))}
device = "{device}"
lr = 1e-5
micro_batch_size = {PROMPTS * GROUP}
shared_prompt = "{shared}"
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
prompts_per_step = {PROMPTS}
group_size = {GROUP}
[sampling]
max_new_tokens = {new}
[data]
train = {json.dumps(str(data))}
chat_template = "none"  # TRL gets plain-string prompts, so no chat template on either side
[logging]
wandb = "disabled"
progress = false
"""
    )
    out = root / f"run-{shared}-{time.monotonic_ns()}"
    parts = _Parts(device)
    wrapped = [
        (HFBackend, parts.wrap(HFBackend, ("generate", "score", "train_step"))),
        (Trainer, parts.wrap(Trainer, ("step",))),
    ]
    try:
        train(load_recipe(recipe), out, quiet=True)
    finally:
        for cls, originals in wrapped:
            for name, fn in originals.items():
                setattr(cls, name, fn)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the calls of one loop step come before that step's own entry (the Trainer.step wrapper returns last)
    per_step: list[dict[str, float]] = []
    current: dict[str, float] = {}
    for part, t in parts.calls:
        current[part] = current.get(part, 0.0) + t
        if part == "step":
            per_step.append(current)
            current = {}
    result: dict[str, Any] = {"step": [s["step"] for s in per_step]}
    for part in ("sampling", "scoring", "train"):
        result[part] = [s.get(part, 0.0) for s in per_step]
    result["other"] = [
        s["step"] - s.get("sampling", 0.0) - s.get("scoring", 0.0) - s.get("train", 0.0) for s in per_step
    ]
    result["completion_tokens"] = statistics.mean(r["tokens"] for r in records) / (PROMPTS * GROUP)
    return result


# -- the floor ---------------------------------------------------------------------------------------------------
def bench_floor(model_dir: Path, prompt_len: int, new: int, steps: int, device: str) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    N = PROMPTS * GROUP
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (N, prompt_len + new), generator=g).to(device)  # [N, P + M]
    advantages = torch.randn(N, 1, generator=g).to(device)  # [N, 1]
    train, decode = [], []
    for _ in range(steps):
        sync(device)
        t = clock()
        model.train()
        logits = model(input_ids=ids).logits[:, prompt_len - 1 : -1]  # [N, M, V]
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)  # [N, M]
        loss = -(logp * advantages).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        train.append(clock() - t)

        model.eval()
        t = clock()
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            model(input_ids=ids[:, :prompt_len], cache=cache, use_cache=True)
            for j in range(prompt_len, prompt_len + new):
                model(input_ids=ids[:, j : j + 1], cache=cache, use_cache=True)
        sync(device)
        decode.append(clock() - t)
    return {"floor_train": train, "floor_decode": decode, "step": [a + b for a, b in zip(train, decode)]}


# -- report ------------------------------------------------------------------------------------------------------
def run_workload(name: str, args: argparse.Namespace, model_dir: Path, root: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    prompt_len, new = WORKLOADS[name]
    prompts = make_prompts(AutoTokenizer.from_pretrained(model_dir), prompt_len)
    total = args.steps + args.warmup
    which = [t for t in TRAINERS if args.which in ("all", t)]
    rounds: dict[str, list[dict[str, float]]] = {t: [] for t in which}
    lengths: dict[str, float] = {}
    for _ in range(args.rounds):
        for trainer in which:
            if trainer == "lmix":
                r = bench_lmix(model_dir, prompts, new, total, args.device, root, "auto")
            elif trainer == "lmix_unshared":
                r = bench_lmix(model_dir, prompts, new, total, args.device, root, "off")
            elif trainer == "floor":
                r = bench_floor(model_dir, prompt_len, new, total, args.device)
            else:
                r = bench_trl(model_dir, prompts, new, total, args.device)
            if "completion_tokens" in r:
                lengths[trainer] = r.pop("completion_tokens")
            rounds[trainer].append({k: statistics.median(v[args.warmup :]) for k, v in r.items()})
    med = {t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for t, rs in rounds.items()}
    out: dict[str, Any] = {"workload": name, "prompt_tokens": prompt_len, "new_tokens": new}
    out["median_s"] = {t: {k: round(v, 4) for k, v in m.items()} for t, m in med.items()}
    out["rounds_step_s"] = {t: [round(r["step"], 4) for r in rs] for t, rs in rounds.items()}
    out["completion_tokens"] = {t: round(v, 2) for t, v in lengths.items()}
    ratios: dict[str, float] = {}
    if "lmix" in med and "floor" in med:
        ratios["lmix/floor"] = med["lmix"]["step"] / med["floor"]["step"]
        ratios["lmix train/floor_train"] = med["lmix"]["train"] / med["floor"]["floor_train"]
        ratios["lmix sampling/floor_decode"] = med["lmix"]["sampling"] / med["floor"]["floor_decode"]
    if "lmix" in med and "trl" in med:
        ratios["lmix/trl"] = med["lmix"]["step"] / med["trl"]["step"]
    if "lmix" in med and "lmix_unshared" in med:
        ratios["shared/unshared train"] = med["lmix"]["train"] / med["lmix_unshared"]["train"]
        ratios["shared/unshared step"] = med["lmix"]["step"] / med["lmix_unshared"]["step"]
    if "floor" in med and "trl" in med:
        ratios["floor/trl"] = med["floor"]["step"] / med["trl"]["step"]
    out["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    for a, b in (("lmix", "trl"), ("lmix", "floor")):
        if a in rounds and b in rounds:  # paired within each round: the load moved less between the two
            out[f"rounds_{a}/{b}"] = [round(x["step"] / y["step"], 3) for x, y in zip(rounds[a], rounds[b])]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=[*WORKLOADS, "both"], default="reference")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each runs every side once)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per side and round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU only; 0: torch's default)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--which", choices=["all", *TRAINERS], default="all")
    ap.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall time, or the process's CPU time (CPU only: a diagnostic on a loaded machine; it leaves out the "
        "reward pool's worker processes)",
    )
    args = ap.parse_args(argv)
    _clock[0] = CLOCKS[args.clock]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="lmix-bench-grpo-"))
    model_dir = make_model(root)
    from transformers import AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    header = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads() if args.device == "cpu" else None,
        "parameters": n_params,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "clock": args.clock,
        "rounds": args.rounds,
        "steps": args.steps,
    }
    workloads = list(WORKLOADS) if args.workload == "both" else [args.workload]
    results = [run_workload(w, args, model_dir, root) for w in workloads]
    header["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({**header, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
