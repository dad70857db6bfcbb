"""Benchmark: lmix's sampler against ``transformers``' ``model.generate``, and mixed two-model sampling.

Run by hand (results and the machine they came from go to ``docs/benchmarks/sampler.md``)::

    nice .venv/bin/python benchmarks/bench_sampler.py                       # both workloads, sampling and greedy
    nice .venv/bin/python benchmarks/bench_sampler.py --workload grpo --mode sample --repeats 20

Workloads (random-init models built from configs, float32, CPU, ``torch.set_num_threads`` left at its default):
    demo   Qwen2, the tiny byte-level tokenizer's vocabulary (262), hidden 256, 4 layers, 16 prompts × 64 tokens.
    grpo   the issue's GRPO benchmark: Qwen2, vocab 2048, hidden 256, 4 layers, 2 prompts × 8 completions × 32
           new tokens.
    prefill  prompt-heavy groups: vocab 2048, 4 prompts of about 200 tokens × 4 completions × 16 new tokens.

Variants, on the same chat-templated prompts, batch and ``max_new_tokens``:
    hf_generate    ``model.generate`` (left-padded batch; ``do_sample`` with ``top_k=0, top_p=1, temperature=1`` or
                   greedy), EOS disabled so every row generates ``max_new_tokens`` tokens.
    lmix           :class:`lmix_hf.sampler.Sampler` on the policy alone, same settings, EOS disabled.
    lmix_mixed     the sampler running the policy and a second model in lockstep, sampling from
                   ``softmax(0.5·z_θ + 0.5·z_ref)`` (``logit_average``'s ``mix_logits``).
    lmix_per_row, lmix_mixed_per_row
                   the same with ``Sampler(prefill="per_row")``: a prompt pass per row instead of one per distinct
                   prompt (the shared prefill's gain; same tokens).

Rounds are interleaved (one call of each variant per round, after one warm-up call each) so that load from other
processes hits every variant alike. Throughput is generated tokens per second of the *best* round's wall time
(``timeit``'s convention: on a shared machine other processes only ever add time, so the minimum is the steadiest
estimate of the code's own cost); the median round and the median process CPU time (all threads) are printed too.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.testing.tiny import build_tiny_model, build_tokenizer
from lmix_core.types import GenerationRequest
from lmix_hf.sampler import Sampler

WORKLOADS = {
    "demo": {"vocab_size": None, "num_prompts": 16, "per_prompt": 1, "max_new_tokens": 64},
    "grpo": {"vocab_size": 2048, "num_prompts": 2, "per_prompt": 8, "max_new_tokens": 32},
    "prefill": {"vocab_size": 2048, "num_prompts": 4, "per_prompt": 4, "max_new_tokens": 16, "filler": 170},
}
QUESTIONS = [
    f"What is {a} + {b}? Answer with \\boxed{{}}." for a, b in [(12, 7), (305, 48), (9, 999), (44, 56)]
]


def build(workload: str) -> dict:
    spec = WORKLOADS[workload]
    tokenizer = build_tokenizer()
    kw = dict(
        arch="qwen2",
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        vocab_size=spec["vocab_size"],
    )
    policy = build_tiny_model(tokenizer, seed=1, **kw)
    reference = build_tiny_model(tokenizer, seed=2, **kw)
    policy.generation_config.eos_token_id = None  # every row runs to max_new_tokens in every variant
    prompts = []
    for i in range(spec["num_prompts"]):
        content = QUESTIONS[i % len(QUESTIONS)] + " " * (i // len(QUESTIONS))
        content += " ".join(str(i + k) for k in range(spec.get("filler", 0) // 3))  # about 3 tokens a number
        messages = [{"role": "user", "content": content}]
        ids = tuple(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
        prompts += [ids] * spec["per_prompt"]
    return {
        "tokenizer": tokenizer,
        "policy": policy,
        "reference": reference,
        "prompts": tuple(prompts),
        **spec,
    }


def variants(setup: dict, mode: str) -> dict[str, Callable[[], int]]:
    """Callables that generate once and return the number of generated tokens."""
    tok, policy, ref, prompts = setup["tokenizer"], setup["policy"], setup["reference"], setup["prompts"]
    M = setup["max_new_tokens"]
    temperature = 0.0 if mode == "greedy" else 1.0
    sampler = Sampler(tok, eos_token_ids=())
    per_row = Sampler(tok, eos_token_ids=(), prefill="per_row")
    request = GenerationRequest(prompt_ids=prompts, max_new_tokens=M, temperature=temperature, seed=0)
    mix = functools.partial(LogitAverage(LogitAverage.Config(alpha=0.5)).mix_logits, step=0)

    P = max(len(p) for p in prompts)
    input_ids = torch.tensor([[tok.pad_token_id] * (P - len(p)) + list(p) for p in prompts])
    attention_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    hf_kwargs = dict(max_new_tokens=M, pad_token_id=tok.pad_token_id)
    if mode == "greedy":
        hf_kwargs.update(do_sample=False)
    else:
        hf_kwargs.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)

    def hf_generate() -> int:
        with torch.inference_mode():
            out = policy.generate(input_ids=input_ids, attention_mask=attention_mask, **hf_kwargs)
        return int((out.shape[1] - P) * out.shape[0])

    def lmix() -> int:
        return int(sampler.sample(request, policy).generation.tokens.loss_mask.sum())

    def lmix_mixed() -> int:
        return int(sampler.sample(request, policy, [ref], mix).generation.tokens.loss_mask.sum())

    def lmix_per_row() -> int:
        return int(per_row.sample(request, policy).generation.tokens.loss_mask.sum())

    def lmix_mixed_per_row() -> int:
        return int(per_row.sample(request, policy, [ref], mix).generation.tokens.loss_mask.sum())

    return {
        "hf_generate": hf_generate,
        "lmix": lmix,
        "lmix_mixed": lmix_mixed,
        "lmix_per_row": lmix_per_row,
        "lmix_mixed_per_row": lmix_mixed_per_row,
    }


def measure(fns: dict[str, Callable[[], int]], repeats: int) -> dict[str, dict[str, float]]:
    for fn in fns.values():
        fn()  # warm-up
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            tokens[name] = fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    out = {}
    for name in fns:
        best, med, c = min(wall[name]), statistics.median(wall[name]), statistics.median(cpu[name])
        out[name] = {
            "tokens": tokens[name],
            "best_s": best,
            "median_s": med,
            "cpu_s": c,
            "tokens_per_s": tokens[name] / best,
            "median_tokens_per_s": tokens[name] / med,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--mode", choices=["sample", "greedy", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print one JSON object per case")
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, load {load}"
    )
    for workload in WORKLOADS if args.workload == "all" else [args.workload]:
        setup = build(workload)
        for mode in ("sample", "greedy") if args.mode == "all" else (args.mode,):
            res = measure(variants(setup, mode), args.repeats)
            ratios = {
                stat: (
                    res["lmix"][key] / res["hf_generate"][key],
                    res["lmix_mixed"][key] / res["lmix"][key],
                    res["lmix"][key] / res["lmix_per_row"][key],
                    res["lmix_mixed"][key] / res["lmix_mixed_per_row"][key],
                )
                for stat, key in (("best", "tokens_per_s"), ("median", "median_tokens_per_s"))
            }
            if args.json:
                print(json.dumps({"workload": workload, "mode": mode, **res, "ratios": ratios}))
                continue
            rows, new = len(setup["prompts"]), setup["max_new_tokens"]
            print(f"\n{workload} / {mode}: {rows} rows x {new} new tokens")
            print(f"  {'variant':<18} {'tokens/s':>10} {'best ms':>9} {'median ms':>10} {'cpu ms':>9}")
            for name, r in res.items():
                best, med, cpu = r["best_s"] * 1e3, r["median_s"] * 1e3, r["cpu_s"] * 1e3
                print(f"  {name:<18} {r['tokens_per_s']:>10.0f} {best:>9.1f} {med:>10.1f} {cpu:>9.1f}")
            for stat, (speedup, mixed, shared, shared_mixed) in ratios.items():
                print(
                    f"  {stat + ':':<8} lmix / hf_generate = {speedup:.2f}x   lmix_mixed / lmix = {mixed:.2f}x   "
                    f"shared / per-row prefill = {shared:.2f}x (mixed {shared_mixed:.2f}x)"
                )


if __name__ == "__main__":
    main()
