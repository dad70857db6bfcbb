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
load, which is printed before and after each configuration.

Settings that apply to every configuration alike: ``--recompute`` sets ``backend.recompute = "full"`` (activation
checkpointing), ``--chunk N`` ``backend.logprob_chunk_size = N`` (tokens per ``[chunk, V]`` block of the log-prob
kernel; 0, the default, lets the backend choose: 512 at this vocabulary), ``--decoder transformers``
``rollout_engine.decoder``. Environment variables (``MALLOC_MMAP_THRESHOLD_`` and the like) reach every child.

``--attribute`` also prints, per configuration, one line per phase of the run (loading, sampling, scoring, and in a
training step the reference and policy forwards, the log-prob kernel, backward through the kernel and through the
decoder, the optimiser step; ``start`` is everything outside them: the loop, the rewards, the final export): the
peak of the bytes ``malloc`` has handed out and not had back, above the value before loading (live tensors and
Python objects; the safetensors weights are file mappings, not ``malloc``'d, so they are not in it), the peak
resident set, and the bytes autograd saved for backward in that phase (parameters excluded): :class:`PhaseMonitor`.
``LMIX_BENCH_MALLOC_TRIM=1`` in the environment makes the monitor call glibc's ``malloc_trim(0)`` at every phase
change (an experiment on allocator retention, not a setting of lmix).

Usage:
    .venv/bin/python benchmarks/bench_lora_memory.py [--steps 3] [--threads 2] [--configs full,lora] [--recompute]
        [--chunk N] [--decoder fused|transformers] [--attribute]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHAPE: dict[str, Any] = dict(
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


MALLINFO2_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (``man 3 mallinfo2``)."""

    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2_FIELDS.split()]


class PhaseMonitor:
    """Peak memory by phase of a run: a thread samples every ``period`` seconds the bytes glibc's ``malloc`` has
    handed out and not had back (``uordblks + hblkhd`` of ``mallinfo2``: every live tensor's storage, and Python's
    own small objects) and the resident set; wrappers installed by :meth:`instrument` name the phase. The tensors
    autograd saves for backward (parameters excluded) are counted by the phase that saved them.
    """

    def __init__(self, period: float = 0.002, trim: bool = False) -> None:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        self._mallinfo2 = libc.mallinfo2
        self._malloc_trim = libc.malloc_trim
        self.trim = trim  # malloc_trim(0) at every phase change: hands glibc's free pages back to the system
        self.phase = "start"
        self.peaks: dict[str, list[int]] = {}  # phase -> [peak in use, peak RSS, in use on first entry]
        self.saved: dict[str, int] = {}  # phase -> bytes autograd saved for backward (last train step)
        self._seen: set[int] = set()
        self.params: set[int] = set()
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def in_use(self) -> int:
        info = self._mallinfo2()
        return int(info.uordblks + info.hblkhd)

    def arena_free(self) -> int:
        """Bytes glibc holds in its arenas but has not handed out (freed, kept for reuse)."""
        return int(self._mallinfo2().fordblks)

    def sample(self) -> None:
        used = self.in_use()
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        rec = self.peaks.setdefault(self.phase, [0, 0, used])
        rec[0], rec[1] = max(rec[0], used), max(rec[1], rss)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.sample()

    def __enter__(self) -> PhaseMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def phased(
        self, name: str | Callable[[tuple[Any, ...]], str], fn: Callable[..., Any]
    ) -> Callable[..., Any]:
        """``fn`` run under the phase ``name`` (or ``name(args)``), the previous phase restored after it."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            previous = self.phase
            self.sample()
            self.phase = name(args) if callable(name) else name
            if self.trim:
                self._malloc_trim(0)
            self.sample()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sample()
                self.phase = previous
                if self.trim:
                    self._malloc_trim(0)

        return wrapper

    def pack(self, t: Any) -> Any:
        """``saved_tensors_hooks`` pack: count the storage once (parameters excluded), keep the tensor as it is."""
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._seen and ptr not in self.params:
            self._seen.add(ptr)
            self.saved[self.phase] = self.saved.get(self.phase, 0) + storage.nbytes()
        return t

    def instrument(self) -> None:
        """Name the phases of ``lmix_hf``'s backend: load, sample, score, and in a train step the forwards, the
        log-prob kernel, the two parts of backward and the optimiser step."""
        import torch

        from lmix_core.ops import mixed_logprobs
        from lmix_hf import backend, token_stats

        hf = backend.HFBackend
        init, train_step = hf.__init__, hf.train_step

        def load(self_: Any, *args: Any, **kwargs: Any) -> None:
            init(self_, *args, **kwargs)
            models = [self_.policy, *self_.references]
            self.params = {p.untyped_storage().data_ptr() for m in models for p in m.parameters()}

        def step(*args: Any, **kwargs: Any) -> Any:
            self._seen.clear()
            self.saved.clear()
            return train_step(*args, **kwargs)

        def forward_name(args: tuple[Any, ...]) -> str:
            trainable = any(p.requires_grad for p in args[0].parameters())
            return f"{self.phase}: {'policy' if trainable else 'reference'} forward"

        def kernel_name(args: tuple[Any, ...]) -> str:
            return f"{self.phase}: log-probs"

        stats_fn = mixed_logprobs._StatsFunction  # autograd looks its backward up on the class when it runs
        wrapped: list[tuple[Any, str, Any, Any]] = [  # (owner, attribute, phase, what runs)
            (hf, "__init__", "load", load),
            (hf, "generate", "sample", hf.generate),
            (hf, "score", "score", hf.score),
            (hf, "train_step", "train", step),
            (token_stats, "final_hidden", forward_name, token_stats.final_hidden),
            (token_stats, "shared_hidden", forward_name, token_stats.shared_hidden),
            (token_stats, "mixed_token_stats", kernel_name, token_stats.mixed_token_stats),
            (torch.Tensor, "backward", "train: backward (decoder)", torch.Tensor.backward),
            (torch.optim.AdamW, "step", "train: optimizer step", torch.optim.AdamW.step),
        ]
        for owner, attribute, phase, fn in wrapped:
            setattr(owner, attribute, self.phased(phase, fn))
        backward = self.phased("train: backward (log-prob chunks)", stats_fn.backward)
        setattr(stats_fn, "backward", staticmethod(backward))  # noqa: B010 - a method: mypy refuses assigning one

    def report(self, baseline: int) -> list[dict[str, Any]]:
        return [
            {
                "phase": phase,
                "peak_in_use_mib": round((rec[0] - baseline) / 2**20, 1),
                "peak_rss_mib": round(rec[1] / 2**20, 1),
                "saved_for_backward_mib": round(self.saved.get(phase, 0) / 2**20, 1),
            }
            for phase, rec in self.peaks.items()
        ]


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


def recipe_text(
    config: str, inputs: dict[str, Path], steps: int, recompute: bool, chunk: int, decoder: str
) -> str:
    backend = f"model = {json.dumps(str(inputs['model']))}\n"
    if recompute:
        backend += 'recompute = "full"\n'
    if chunk:
        backend += f"logprob_chunk_size = {chunk}\n"
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
[rollout_engine]
type = "hf"
decoder = "{decoder}"
[logging]
wandb = "disabled"
progress = false
"""


def child(
    config: str,
    root: Path,
    steps: int,
    threads: int,
    recompute: bool,
    chunk: int,
    decoder: str,
    attribute: bool,
) -> None:
    """Run one configuration in this (fresh) process and print one JSON line (with ``attribute``, one line per
    phase before it: :class:`PhaseMonitor`)."""
    import peft  # noqa: F401 - imported before the baseline so both configurations count the same libraries
    import torch
    import transformers  # noqa: F401

    from lmix_core.recipe import load_recipe
    from lmix_core.train.run import train

    if threads:
        torch.set_num_threads(threads)
    baseline = memory_mib("VmRSS")
    trim = os.environ.get("LMIX_BENCH_MALLOC_TRIM") == "1"
    monitor = PhaseMonitor(trim=trim) if attribute or trim else None
    heap_baseline = monitor.in_use() if monitor is not None else 0
    if monitor is not None:
        monitor.instrument()
    inputs = {k: root / v for k, v in (("model", "model"), ("copy", "model_copy"), ("train", "train.jsonl"))}
    recipe = root / f"{config}.toml"
    recipe.write_text(recipe_text(config, inputs, steps, recompute, chunk, decoder))
    out = root / f"run-{config}"
    t0 = time.perf_counter()
    if monitor is None:
        train(load_recipe(recipe), out, quiet=True)
    else:
        with monitor, torch.autograd.graph.saved_tensors_hooks(monitor.pack, lambda t: t):
            train(load_recipe(recipe), out, quiet=True)
        for row in monitor.report(heap_baseline):
            print(json.dumps({"config": config, **row}), flush=True)
        print(json.dumps({"config": config, "arena_free_mib": round(monitor.arena_free() / 2**20, 1)}))
    wall = time.perf_counter() - t0
    peak = memory_mib("VmHWM")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records]
    print(
        json.dumps(
            {
                "config": config,
                "recompute": recompute,
                "logprob_chunk_size": chunk,
                "decoder": decoder,
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
    parser.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="backend.logprob_chunk_size in every configuration (0: the backend's automatic size)",
    )
    parser.add_argument(
        "--decoder",
        choices=("fused", "transformers"),
        default="fused",
        help="rollout_engine.decoder in every configuration",
    )
    parser.add_argument(
        "--attribute", action="store_true", help="also print each phase's peak memory (PhaseMonitor)"
    )
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(
            args.child,
            args.root,
            args.steps,
            args.threads,
            args.recompute,
            args.chunk,
            args.decoder,
            args.attribute,
        )
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
            cmd += ["--chunk", str(args.chunk), "--decoder", args.decoder]
            cmd += ["--attribute"] if args.attribute else []
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"}
            )
            if proc.returncode != 0:
                sys.exit(f"configuration {config} failed:\n{proc.stderr[-4000:]}")
            *phases, last = proc.stdout.strip().splitlines()
            for line in phases:
                print(line, flush=True)
            result = json.loads(last)
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
