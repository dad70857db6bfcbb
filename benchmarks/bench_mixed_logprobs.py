"""Benchmark: memory and time of mixed (two-head) log-probs + entropy, forward and backward, on CPU.

Run by hand (slow: each full-size ``[2048, 1024] × [1024, 152064]`` matmul is ~640 GFLOP)::

    nice .venv/bin/python benchmarks/bench_mixed_logprobs.py                   # B=2, T=1024, H=1024, V=152064
    nice .venv/bin/python benchmarks/bench_mixed_logprobs.py --seq 128 --repeats 1   # a quick look

Every variant runs in a fresh subprocess so peak memory is its own. The objective is the same token-separable loss
for all, ``L = Σ_i g_i·log π(a_i) + Σ_i g'_i·H_i`` with fixed random ``g, g'``, differentiated w.r.t. the policy's
final hidden states ``h`` and lm-head weight ``W``.

Variants:
    naive        full ``[N, V]`` logits for both heads, ``geometric_mix``, log_softmax, gather, entropy, autograd.
    chunked      :func:`lmix_core.ops.mixed_logprobs.mixed_token_stats` (backward recomputes each chunk).
    fused        :func:`lmix_core.ops.mixed_logprobs.mixed_token_loss` (gradient computed in the forward loop).
    naive1, chunked1, fused1   the same for the policy head alone (no reference).
    trl1         TRL's ``trl.kernels.chunked_logprob.ChunkedLogProbFunction`` (policy head alone), as TRL calls it
                 (``chunk_size=32768`` vocabulary columns per tile, 4096 tokens per tile, outputs=("entropy",)).

Memory: ``extra = peak RSS − RSS after building the inputs − gradient storage (|h| + |W| bytes)``; the peak is
``getrusage(RUSAGE_SELF).ru_maxrss``. Time: median wall time and median process CPU time (all threads) of
``--repeats`` forward+backward calls; on a shared machine the CPU time is the steadier of the two.

Also importable by pytest-benchmark at a tiny size: ``pytest benchmarks/bench_mixed_logprobs.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from lmix_core.ops.mixed_logprobs import (
    geometric_mix,
    mixed_token_loss,
    mixed_token_stats,
    reference_token_stats,
)

VARIANTS = ("naive", "chunked", "fused", "naive1", "chunked1", "fused1", "trl1")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs(n: int, hidden: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Policy and reference heads, targets and upstream weights, fp32."""
    gen = torch.Generator().manual_seed(seed)
    scale = hidden**-0.5
    return {
        "h": torch.randn(n, hidden, generator=gen).requires_grad_(True),  # [N, H]
        "w": (torch.randn(vocab, hidden, generator=gen) * scale).requires_grad_(True),  # [V, H]
        "h_ref": torch.randn(n, hidden, generator=gen),  # [N, H]
        "w_ref": torch.randn(vocab, hidden, generator=gen) * scale,  # [V, H]
        "targets": torch.randint(0, vocab, (n,), generator=gen),  # [N]
        "g": torch.randn(n, generator=gen),  # [N]
        "g_ent": torch.randn(n, generator=gen),  # [N]
    }


def run_variant(variant: str, x: dict[str, torch.Tensor], chunk_size: int | None) -> torch.Tensor:
    """One forward + backward of ``variant``; returns the detached loss."""
    mixed = not variant.endswith("1")
    mix = functools.partial(geometric_mix, alpha=0.5, ref_weights=(1.0,)) if mixed else None
    refs = ([x["h_ref"]], [x["w_ref"]]) if mixed else ([], [])
    g, g_ent = x["g"], x["g_ent"]
    if variant.startswith("naive"):
        stats = reference_token_stats(x["h"], x["w"], *refs, x["targets"], mix)
        loss = (g * stats.logp).sum() + (g_ent * stats.entropy).sum()
    elif variant.startswith("chunked"):
        stats = mixed_token_stats(x["h"], x["w"], *refs, x["targets"], mix, chunk_size=chunk_size)
        loss = (g * stats.logp).sum() + (g_ent * stats.entropy).sum()
    elif variant.startswith("fused"):

        def token_loss(logp: torch.Tensor, ent: torch.Tensor | None, rows: slice) -> torch.Tensor:
            return g[rows] * logp + g_ent[rows] * ent  # [c]

        loss = mixed_token_loss(
            x["h"], x["w"], *refs, x["targets"], mix, token_loss, chunk_size=chunk_size
        ).loss
    elif variant == "trl1":
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction

        logp, ent, *_ = ChunkedLogProbFunction.apply(
            x["h"], x["w"], None, x["targets"], 1.0, 32768, None, 1.0, ("entropy",)
        )
        loss = (g * logp).sum() + (g_ent * ent).sum()
    else:
        raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    loss.backward()
    return loss.detach()


def worker(args: argparse.Namespace) -> None:
    """Measure one variant in this (fresh) process and print one JSON line."""
    torch.manual_seed(0)
    x = make_inputs(args.batch * args.seq, args.hidden, args.vocab)
    base = _rss_bytes()
    grad_bytes = x["h"].numel() * 4 + x["w"].numel() * 4
    times, cpu_times, loss = [], [], float("nan")
    for _ in range(args.repeats):
        x["h"].grad = x["w"].grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        loss = float(run_variant(args.worker, x, args.chunk_size))
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = _peak_bytes()
    print(
        json.dumps(
            {
                "variant": args.worker,
                "times_s": times,
                "median_s": statistics.median(times),
                "cpu_times_s": cpu_times,
                "median_cpu_s": statistics.median(cpu_times),
                "peak_over_inputs_bytes": peak - base,
                "extra_bytes": peak - base - grad_bytes,
                "grad_bytes": grad_bytes,
                "loss": loss,
            }
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk (default: automatic)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}"
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args)
        return
    header = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": {"B": args.batch, "T": args.seq, "H": args.hidden, "V": args.vocab},
        "repeats": args.repeats,
        "chunk_size": args.chunk_size,
    }
    print(json.dumps(header), flush=True)
    results = []
    for variant in args.variants.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            variant,
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
        ]
        cmd += ["--hidden", str(args.hidden), "--vocab", str(args.vocab), "--repeats", str(args.repeats)]
        if args.chunk_size is not None:
            cmd += ["--chunk-size", str(args.chunk_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
        r = results[-1]
        print(
            f"{variant:9s} wall {r['median_s']:8.2f} s  cpu {r['median_cpu_s']:8.2f} s   extra {r['extra_bytes'] / 2**30:6.3f} GiB   "
            f"(peak over inputs {r['peak_over_inputs_bytes'] / 2**30:6.3f} GiB)   loss {r['loss']:.6g}",
            flush=True,
        )
    by = {r["variant"]: r for r in results}
    for ref, others in (("naive", ("chunked", "fused")), ("naive1", ("chunked1", "fused1", "trl1"))):
        if ref not in by:
            continue
        for o in others:
            if o in by:
                t = by[o]["median_s"] / by[ref]["median_s"]
                c = by[o]["median_cpu_s"] / by[ref]["median_cpu_s"]
                m = by[o]["extra_bytes"] / max(by[ref]["extra_bytes"], 1)
                print(
                    f"{o:9s} vs {ref:7s}: wall {t:5.2f}x  cpu {c:5.2f}x   extra memory {m:6.1%}", flush=True
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "results": results}, f, indent=2)


# -- pytest-benchmark entry points (tiny shapes; `pytest benchmarks/bench_mixed_logprobs.py`) ---------------------
def _tiny() -> dict[str, torch.Tensor]:
    return make_inputs(256, 64, 4096)


def test_bench_naive(benchmark) -> None:  # noqa: ANN001
    """Naive two-head mixed log-probs, forward + backward, at a tiny size."""
    x = _tiny()
    benchmark(run_variant, "naive", x, None)


def test_bench_chunked(benchmark) -> None:  # noqa: ANN001
    """Chunked two-head mixed log-probs (recomputing backward), at a tiny size."""
    x = _tiny()
    benchmark(run_variant, "chunked", x, 64)


def test_bench_fused(benchmark) -> None:  # noqa: ANN001
    """Chunked two-head mixed loss with the gradient computed in the forward loop, at a tiny size."""
    x = _tiny()
    benchmark(run_variant, "fused", x, 64)


if __name__ == "__main__":
    main()
