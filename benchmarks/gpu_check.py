"""GPU check: lmix's GPU paths on one CUDA device, offline, in at most 8 minutes, summarised as one JSON object.

Sections (each reports ``status`` ``ok``, ``skipped`` with a reason, or ``error`` with the exception, and the run goes
on to the next):

- ``model``: a random-init Qwen2 of Qwen2-0.5B's shape (vocabulary 151,936, hidden 896, 24 layers, 14 query / 2
  key-value heads, intermediate 4,864, tied embeddings; about 494M parameters), written in bfloat16 to a temporary
  directory (no network: the tokenizer is lmix's synthetic one, the vocabulary padded to 151,936).
- ``grpo_logit_average``: ``lmix run``'s training loop (``lmix_core.train.run.train``) with the ``hf`` backend on
  CUDA in bfloat16, ``logit_average`` (α = 0.5, the reference a second copy of the starting model), ``grpo``,
  ``ppo_clip``; 4 prompts × 8 completions of up to 128 new tokens per step. Reports the step times, the time of the
  backend's ``generate`` and ``train_step`` calls, training tokens per second (every token forwarded by
  ``train_step``, prompts included) and model-FLOPs utilisation:
  ``MFU = (6·N + 2·N) · tokens/s / peak``: a forward and backward of the policy and a forward of the reference per
  token, ``N`` the parameter count (attention's sequence-length term left out, as in the PaLM paper's MFU,
  arXiv 2204.02311); ``peak`` is the card's dense bf16 peak from :data:`PEAK_TFLOPS` or ``--peak-tflops``.
- ``sampling``: on the same prompts (32 rows, 128 new tokens, temperature 1): the backend's sampler alone
  (``distribution = "policy"``), mixed (``combined``: policy and reference in lockstep) and transformers'
  ``model.generate`` (``do_sample=True``, ``top_k=0``) on the policy; generated tokens per second of each, after one
  warm-up call.
- ``lora_mixed_sampling``: the same mixed sampling with a rank-16 LoRA policy whose reference is the policy with its
  adapters disabled (needs ``peft``; skipped without it).
- ``fsdp_one_rank``: the training loop with ``backend.parallel = "fsdp"`` in one process (a one-rank group); skipped
  when the backend has no such option.
- ``megatron_tp1``: the training loop with the ``megatron`` backend at ``tp = 1`` (needs ``megatron-core`` and
  ``lmix-megatron``; skipped without them).

Only torch, transformers, safetensors and lmix's own packages are required; ``peft`` and ``megatron-core`` are
optional. ``--budget-s`` (default 420) skips the sections that would start after it, so the whole check ends within
8 minutes. ``--dry`` runs the same code at tiny sizes on the CPU (a 2-layer model, 2 steps, 4 new tokens) in float32:
CI runs it (``tests/benchmarks/test_gpu_check.py``).

Usage:
    python benchmarks/gpu_check.py [--dry] [--budget-s 420] [--peak-tflops T] [--out summary.json]
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

#: Qwen2-0.5B's shape (its config.json), random-init here.
FULL_SHAPE = dict(
    arch="qwen2",
    vocab_size=151936,
    hidden_size=896,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    intermediate_size=4864,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
)
DRY_SHAPE = dict(
    arch="qwen2", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, tie_word_embeddings=True
)
#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, by a substring of ``torch.cuda.get_device_name()``; the
#: first match wins.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L4", 121.0),
)


class Sizes:
    """The workload of one mode (``dry``: tiny, CPU, float32; otherwise the GPU check's)."""

    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.shape = DRY_SHAPE if dry else FULL_SHAPE
        self.device = "cpu" if dry else "cuda"
        self.dtype = "float32" if dry else "bfloat16"
        self.prompts, self.group = (2, 2) if dry else (4, 8)
        self.new_tokens = 4 if dry else 128
        self.steps = 2 if dry else 4
        self.short_steps = 1 if dry else 2  # FSDP and megatron
        self.sample_rows = 2 if dry else 32
        self.micro_batch = 4 if dry else 16


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def environment(sizes: Sizes, peak_override: float | None) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_available": torch.cuda.is_available(),
        "dry": sizes.dry,
    }
    for name in ("peft", "megatron.core", "safetensors"):
        spec = importlib.util.find_spec(name.split(".")[0])
        env[name.replace(".", "_")] = _version(name) if spec is not None else None
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        env.update(
            device=name,
            capability=".".join(map(str, torch.cuda.get_device_capability())),
            memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(),
            torch_cuda=torch.version.cuda,
        )
        peak = peak_override or next((t for key, t in PEAK_TFLOPS if key in name), None)
    else:
        env["device"] = f"cpu ({os.cpu_count()} cores)"
        peak = peak_override
    env["peak_tflops"] = peak
    return env


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - an optional package that fails to import is reported, not fatal
        return f"import failed: {type(exc).__name__}: {exc}"
    return str(getattr(mod, "__version__", "unknown"))


# -- the model and the recipes -----------------------------------------------------------------------------------
def make_inputs(root: Path, sizes: Sizes) -> dict[str, Any]:
    from lmix_core.demo.task import generate, write_jsonl
    from lmix_core.progress_bars import quiet_progress
    from lmix_core.synthetic.model import build_tiny_model
    from lmix_core.synthetic.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, seed=0, **sizes.shape)
    if sizes.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    path = root / "model"
    with quiet_progress():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    train = write_jsonl(root / "train.jsonl", generate(256, levels=(1, 2), seed=0))
    return {"model": path, "train": train, "parameters": params, "vocab_size": sizes.shape.get("vocab_size")}


def recipe(
    inputs: dict[str, Any], sizes: Sizes, *, backend: str = "hf", extra: str = "", steps: int = 0
) -> str:
    model = json.dumps(str(inputs["model"]))
    device = f'device = "{sizes.device}"\n' if backend == "hf" else ""
    return f"""schema = 1
[backend]
type = "{backend}"
model = {model}
dtype = "{sizes.dtype}"
{device}lr = 1e-6
micro_batch_size = {sizes.micro_batch}
{extra}
[combiner]
type = "logit_average"
alpha = 0.5
[advantage]
type = "grpo"
[loss]
type = "ppo_clip"
[[rewards]]
type = "math"
[train]
steps = {steps or sizes.steps}
prompts_per_step = {sizes.prompts}
group_size = {sizes.group}
seed = 0
[sampling]
max_new_tokens = {sizes.new_tokens}
temperature = 1.0
[data]
train = {json.dumps(str(inputs["train"]))}
[logging]
wandb = "disabled"
progress = false
"""


class _Timed:
    """Times a backend class's ``generate`` and ``train_step`` (and counts ``train_step``'s tokens) inside the loop;
    a check-only wrapper, removed by :meth:`restore`."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.generate: list[float] = []
        self.train: list[float] = []
        self.train_tokens: list[int] = []
        self.originals = {name: getattr(cls, name) for name in ("generate", "train_step")}
        cls.generate = self._wrap(self.originals["generate"], self.generate)
        cls.train_step = self._wrap(self.originals["train_step"], self.train, count=True)

    def _wrap(self, fn: Callable, into: list[float], count: bool = False) -> Callable:
        @functools.wraps(fn)
        def timed(backend: Any, *args: Any, **kwargs: Any) -> Any:
            if count:
                groups = args[0]
                self.train_tokens.append(
                    sum(int(mb.tokens.attention_mask.sum()) for group in groups for mb in group)
                )
            sync()
            t = time.perf_counter()
            out = fn(backend, *args, **kwargs)
            sync()
            into.append(time.perf_counter() - t)
            return out

        return timed

    def restore(self) -> None:
        for name, fn in self.originals.items():
            setattr(self.cls, name, fn)


def run_loop(text: str, root: Path, name: str, backend_cls: type, params: int, peak: float | None) -> dict:
    """Run a recipe through the training loop and report its step times, tokens/s and MFU."""
    from lmix_core.recipe import load_recipe
    from lmix_core.train.run import train

    path = root / f"{name}.toml"
    path.write_text(text)
    out = root / f"run-{name}"
    timed = _Timed(backend_cls)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        train(load_recipe(path), out, quiet=True)
    finally:
        timed.restore()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step_time_s"] for r in records]
    later = slice(1, None) if len(steps) > 1 else slice(None)  # the first step warms up kernels and caches
    train_s, train_tokens = sum(timed.train[later]), sum(timed.train_tokens[later])
    tokens_per_s = train_tokens / train_s if train_s > 0 else float("nan")
    achieved = 8 * params * tokens_per_s / 1e12  # 6N (policy forward + backward) + 2N (reference forward)
    result = {
        "status": "ok",
        "steps": len(records),
        "losses_finite": all(math.isfinite(r["loss"]) for r in records),
        "skipped_steps": sum(bool(r["skipped"]) for r in records),
        "step_time_s": [round(t, 3) for t in steps],
        "median_step_s": round(statistics.median(steps[later]), 3),
        "generate_s": [round(t, 3) for t in timed.generate],
        "train_step_s": [round(t, 3) for t in timed.train],
        "train_tokens_per_step": timed.train_tokens,
        "train_tokens_per_s": round(tokens_per_s, 1),
        "achieved_tflops": float(f"{achieved:.4g}"),
        "mfu": float(f"{achieved / peak:.4g}") if peak else None,
    }
    if torch.cuda.is_available():
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


# -- sampling throughput -----------------------------------------------------------------------------------------
def prompt_ids(backend: Any, parts: Any, rows: int) -> list[list[int]]:
    tokenizer = backend.tokenizer
    texts = [parts.render_prompt(tokenizer, ex) for ex in parts.train_examples[:rows]]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def time_sampler(
    backend: Any, prompts: Sequence[Sequence[int]], new: int, distribution: str
) -> dict[str, Any]:
    from lmix_core.types import GenerationRequest

    def once(seed: int) -> tuple[float, int]:
        request = GenerationRequest(
            prompt_ids=tuple(tuple(p) for p in prompts),
            max_new_tokens=new,
            temperature=1.0,
            seed=seed,
            distribution=distribution,
        )
        sync()
        t = time.perf_counter()
        gen = backend.generate(request)
        sync()
        return time.perf_counter() - t, int(gen.tokens.loss_mask.sum())

    once(0)  # warm-up
    seconds, tokens = once(1)
    return {"seconds": round(seconds, 3), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}


def time_hf_generate(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], new: int
) -> dict[str, Any]:
    """transformers' ``generate`` on the same left-padded prompts; tokens up to and including each row's first EOS."""
    P = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    ids = torch.full((len(prompts), P), pad, dtype=torch.long)  # [B, P]
    mask = torch.zeros(len(prompts), P, dtype=torch.long)  # [B, P]
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p)
        mask[i, P - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    eos = model.generation_config.eos_token_id
    eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=device)

    def once(seed: int) -> tuple[float, int]:
        torch.manual_seed(seed)
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=new,
                pad_token_id=pad,
            )
        sync()
        seconds = time.perf_counter() - t
        new_ids = out[:, P:]  # [B, M]
        is_eos = torch.isin(new_ids, eos_ids)  # [B, M]
        first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, new_ids.shape[1])  # [B]
        return seconds, int(first.sum())

    once(0)  # warm-up
    seconds, tokens = once(1)
    return {"seconds": round(seconds, 3), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}


def sampling(inputs: dict[str, Any], sizes: Sizes, root: Path, *, lora: bool) -> dict[str, Any]:
    from lmix_core.recipe import load_recipe
    from lmix_core.train.run import build

    extra = "lora_rank = 16\nlora_alpha = 32\n" if lora else ""
    path = root / f"sampling-lora{int(lora)}.toml"
    path.write_text(recipe(inputs, sizes, extra=extra))
    parts = build(load_recipe(path), root / f"sampling-lora{int(lora)}")
    try:
        backend = parts.backend
        prompts = prompt_ids(backend, parts, sizes.sample_rows)
        result: dict[str, Any] = {"status": "ok", "rows": len(prompts), "max_new_tokens": sizes.new_tokens}
        result["mixed"] = time_sampler(backend, prompts, sizes.new_tokens, "combined")
        if not lora:
            result["single"] = time_sampler(backend, prompts, sizes.new_tokens, "policy")
            result["hf_generate"] = time_hf_generate(
                backend.policy, backend.tokenizer, prompts, sizes.new_tokens
            )
            result["single_over_hf_generate"] = round(
                result["single"]["tokens_per_s"] / result["hf_generate"]["tokens_per_s"], 3
            )
            result["mixed_over_hf_generate"] = round(
                result["mixed"]["tokens_per_s"] / result["hf_generate"]["tokens_per_s"], 3
            )
        return result
    finally:
        parts.rewards.close()
        parts.backend.close()


# -- the sections ------------------------------------------------------------------------------------------------
def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check(args: argparse.Namespace) -> dict[str, Any]:
    """Run every section; the summary object."""
    sizes = Sizes(args.dry)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"check": "lmix gpu_check", "sections": {}}
    sections = summary["sections"]
    env = environment(sizes, args.peak_tflops)
    summary["environment"] = env
    if not sizes.dry and not torch.cuda.is_available():
        summary["status"] = "error"
        summary["error"] = "no CUDA device (run with --dry for the CPU rehearsal)"
        return summary
    if sizes.dry:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    with tempfile.TemporaryDirectory(prefix="lmix-gpu-check-") as tmp:
        root = Path(tmp)
        inputs: dict[str, Any] = {}

        def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
            elapsed = time.perf_counter() - t0
            if elapsed > args.budget_s:
                sections[name] = {"status": "skipped", "reason": f"time budget ({args.budget_s:.0f} s) spent"}
                return
            start = time.perf_counter()
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - one failing section is reported and the others still run
                result = {
                    "status": "error",
                    "error": f"{type(exc).__name__}: {exc}"[:2000],
                    "traceback": traceback.format_exc()[-4000:],
                }
            result["wall_s"] = round(time.perf_counter() - start, 2)
            sections[name] = result
            _free()

        def model() -> dict[str, Any]:
            inputs.update(make_inputs(root, sizes))
            return {
                "status": "ok",
                "parameters": inputs["parameters"],
                "shape": sizes.shape,
                "dtype": sizes.dtype,
            }

        section("model", model)
        if sections["model"]["status"] != "ok":
            summary["status"] = "error"
            return summary
        params, peak = inputs["parameters"], env["peak_tflops"]
        from lmix_hf.backend import HFBackend

        section(
            "grpo_logit_average",
            lambda: run_loop(recipe(inputs, sizes), root, "grpo", HFBackend, params, peak),
        )
        section("sampling", lambda: sampling(inputs, sizes, root, lora=False))
        if importlib.util.find_spec("peft") is None:
            sections["lora_mixed_sampling"] = {"status": "skipped", "reason": "peft is not installed"}
        else:
            section("lora_mixed_sampling", lambda: sampling(inputs, sizes, root, lora=True))
        if "parallel" not in attrs_fields(HFBackend.Config):
            sections["fsdp_one_rank"] = {"status": "skipped", "reason": "fsdp option not available"}
        else:
            fsdp = recipe(inputs, sizes, extra='parallel = "fsdp"\n', steps=sizes.short_steps)
            section("fsdp_one_rank", lambda: run_loop(fsdp, root, "fsdp", HFBackend, params, peak))
        missing = [m for m in ("megatron.core", "lmix_megatron") if not _importable(m)]
        if missing:
            sections["megatron_tp1"] = {
                "status": "skipped",
                "reason": f"not importable: {', '.join(missing)}",
            }
        else:

            def megatron() -> dict[str, Any]:
                from lmix_megatron.backend import MegatronBackend

                text = recipe(
                    inputs, sizes, backend="megatron", extra="tp = 1\npp = 1\n", steps=sizes.short_steps
                )
                return run_loop(text, root, "megatron", MegatronBackend, params, peak)

            section("megatron_tp1", megatron)
    statuses = [s["status"] for s in sections.values()]
    summary["status"] = "error" if "error" in statuses else "ok"
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    return summary


def attrs_fields(cls: type) -> set[str]:
    import attrs

    return {f.name for f in attrs.fields(cls)}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU, float32 (what CI runs)")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="no section starts after this many seconds"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, for MFU")
    parser.add_argument("--out", type=Path, default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    summary = check(args)
    text = json.dumps(summary)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text, flush=True)
    return 0 if summary["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
