"""Benchmark: scoring MATH-style completions with the ``math`` verifier through the reward pool.

Run by hand::

    nice .venv/bin/python benchmarks/bench_rewards.py                      # 10,000 completions, 2 workers
    nice .venv/bin/python benchmarks/bench_rewards.py --n 1000 --baseline-n 1000   # a quick look

Measures, on the same generated samples:

    pool        ``RewardPool(workers=W).score([Math], samples)``: worker processes, per-sample limit ``--timeout``
                (the pool's default, 1 s). The pool is started first (start-up reported separately) and the batch is
                scored twice: ``cold`` (each worker's first sight of these answers) and ``warm`` (the per-process
                parse caches are filled, as when a group's rollouts repeat an answer across steps).
    in_process  ``Math().score(samples)`` in this process: the verifier's own cost without the pool.
    direct      a plain loop calling math-verify directly, as one would without lmix:
                ``verify(parse("$" + reference + "$"), parse(completion))`` (math-verify extracts the answer itself).

Each run records wall time and CPU time (this process plus, for the pool, its worker processes, read from
``/proc``) and the load average before it. On a shared machine the CPU time per sample is the steadier figure; the
wall-clock rate is what a training step sees. The overhead of the pool against calling math-verify directly is
reported both ways: ``*_speedup_vs_direct_wall`` (> 1: the pool is faster; the ideal with W idle cores is about W)
and ``*_cpu_vs_direct`` (CPU per sample relative to the direct loop; < 1: cheaper).

Samples: ``--n`` completions from ``n / 8`` problems with 8 rollouts each (references repeat within a group, as in
GRPO). Answers are integers, negatives, decimals, fractions, square roots, multiples of π and intervals; about 35 %
of the rollouts are wrong, 10 % state the answer as "The answer is …" instead of boxing it, 5 % give an equivalent
form (``0.5`` for ``\\frac{1}{2}``) and 5 % are cut off before any answer. Completions are 300–1,500 characters of
reasoning with inline LaTeX.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time

from lmix_core.rewards.math import Math
from lmix_core.rewards.pool import DEFAULT_TIMEOUT_S, RewardPool
from lmix_core.types import RewardInput

STEPS = [
    "First we rewrite the equation as ${a}x + {b} = {c}$, so $x = \\frac{{{c} - {b}}}{{{a}}}$.",
    "Squaring both sides gives $x^2 = {a}^2 + {b}^2 = {s}$.",
    "By the sum formula, $\\sum_{{k=1}}^{{{a}}} k = \\frac{{{a}({a}+1)}}{{2}}$.",
    "We substitute $y = {b}$ into $f(y) = y^2 - {a}y + {c}$ and simplify carefully.",
    "Note that $\\gcd({a}, {b}) = 1$, hence the fraction is already reduced.",
    "The area of the triangle is $\\frac{{1}}{{2}} \\cdot {a} \\cdot {b}$.",
    "Let me double-check: ${a} \\times {b} = {p}$, which matches.",
    "Using $\\sin^2\\theta + \\cos^2\\theta = 1$ we get $\\cos\\theta = \\pm\\sqrt{{1 - \\frac{{{a}}}{{{s}}}}}$.",
]


def _answer(rng: random.Random) -> tuple[str, str]:
    """A reference answer and an equivalent alternative form."""
    a, b = rng.randint(1, 60), rng.randint(2, 40)
    kind = rng.choice(["int", "int", "neg", "decimal", "frac", "sqrt", "pi", "interval"])
    if kind == "int":
        return str(a * b), str(a * b)
    if kind == "neg":
        return str(-a), f"-{a}"
    if kind == "decimal":
        return f"{a}.5", f"\\frac{{{2 * a + 1}}}{{2}}"
    if kind == "frac":
        return f"\\frac{{{a}}}{{{a + b}}}", f"{a}/{a + b}"
    if kind == "sqrt":
        return f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}"
    if kind == "pi":
        return f"\\frac{{{a}\\pi}}{{{b}}}", f"\\frac{{{a}}}{{{b}}}\\pi"
    return f"({a}, {a + b})", f"\\left({a}, {a + b}\\right)"


def _wrong(reference: str, rng: random.Random) -> str:
    if any(c.isdigit() for c in reference):
        digits = [i for i, c in enumerate(reference) if c.isdigit()]
        i = rng.choice(digits)
        return reference[:i] + str((int(reference[i]) + rng.randint(1, 8)) % 10) + reference[i + 1 :]
    return reference + "+1"


def make_samples(n: int, seed: int = 0) -> list[RewardInput]:
    """``n`` realistic completions, 8 rollouts per problem (see the module docstring)."""
    rng = random.Random(seed)
    samples = []
    while len(samples) < n:
        reference, alternative = _answer(rng)
        for _ in range(8):
            nums = {k: rng.randint(2, 99) for k in "abc"}
            nums |= {"s": nums["a"] ** 2 + nums["b"] ** 2, "p": nums["a"] * nums["b"]}
            body = " ".join(rng.choice(STEPS).format(**nums) for _ in range(rng.randint(3, 12)))
            roll = rng.random()
            if roll < 0.05:
                completion = body  # cut off before answering
            else:
                answer = (
                    _wrong(reference, rng) if roll < 0.40 else (alternative if roll < 0.45 else reference)
                )
                if rng.random() < 0.10:
                    completion = f"{body}\n\nThe answer is ${answer}$."
                else:
                    completion = f"{body}\n\nTherefore, the final answer is $\\boxed{{{answer}}}$."
            samples.append(RewardInput(prompt="Solve.", completion=completion, reference=reference))
    return samples[:n]


def _direct(samples: list[RewardInput]) -> list[bool]:
    from math_verify import parse, verify

    return [bool(verify(parse(f"${s.reference}$"), parse(s.completion))) for s in samples]


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by processes ``pids`` (Linux ``/proc``)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def _timed(report: dict, label: str, n: int, run, pids: list[int] | None = None):
    """Run ``run()``; record wall time, CPU time (this process plus ``pids``), rates and the load average."""
    load = os.getloadavg()[0]
    wall, cpu, workers = time.perf_counter(), time.process_time(), _cpu_s(pids or [])
    out = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    workers = _cpu_s(pids or []) - workers
    report[label] = {
        "wall_s": round(wall, 2),
        "samples_per_s_wall": round(n / wall, 1),
        "cpu_s": round(cpu + workers, 2),
        "cpu_ms_per_sample": round(1000 * (cpu + workers) / n, 3),
        "parent_cpu_s": round(cpu, 2),
        "load_avg_before": round(load, 1),
    }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="completions to score")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per-sample limit in the pool (s)"
    )
    p.add_argument(
        "--baseline-n", type=int, default=None, help="samples for the in-process runs (default: --n)"
    )
    args = p.parse_args(argv)
    samples = make_samples(args.n)
    base = samples[: args.baseline_n or args.n]
    report: dict = {
        "n": args.n,
        "workers": args.workers,
        "cpus": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }

    t = time.perf_counter()
    pool = RewardPool(workers=args.workers, timeout_s=args.timeout)
    pool.score([Math.default()], samples[:2])  # waits until every worker is up
    report["pool_startup_s"] = round(time.perf_counter() - t, 2)
    pids = [w.proc.pid for w in pool._pool]
    for label in ("pool_cold", "pool_warm"):
        verdicts = _timed(report, label, args.n, lambda: pool.score([Math.default()], samples)[0], pids)
    pool.close()
    reasons = [v.reason.split(":")[0] for v in verdicts]
    report["pool_verdicts"] = {r: reasons.count(r) for r in sorted(set(reasons))}

    Math.default().score(make_samples(2, seed=1))  # import math-verify in this process, not timed
    ours = _timed(report, "in_process", len(base), lambda: Math.default().score(base))
    _direct(base[:2])  # import and grammar set-up, not timed
    direct = _timed(report, "direct", len(base), lambda: _direct(base))
    for label in ("pool_cold", "pool_warm"):
        report[f"{label}_speedup_vs_direct_wall"] = round(
            report[label]["samples_per_s_wall"] / report["direct"]["samples_per_s_wall"], 2
        )
        report[f"{label}_cpu_vs_direct"] = round(
            report[label]["cpu_ms_per_sample"] / report["direct"]["cpu_ms_per_sample"], 2
        )
    agree = sum((v.score == 1.0) == d for v, d in zip(ours, direct))
    report["agreement_with_direct"] = agree / len(base)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
