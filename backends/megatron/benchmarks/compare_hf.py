"""Held-out accuracy of the same logit-averaging GRPO run on the HF backend and on megatron TP2×PP2.

The issue's acceptance check: *a demo-sized logit-averaging GRPO run trains on Megatron TP2×PP2 under torchrun with
4 CPU processes, and reaches the HF backend's accuracy within noise.* After ``lmix demo`` (which writes the data and
the SFT model under ``runs/demo``)::

    python backends/megatron/benchmarks/compare_hf.py                      # the demo's RL stage, both backends
    python backends/megatron/benchmarks/compare_hf.py --seeds 0 1 2        # three seeds each
    python backends/megatron/benchmarks/compare_hf.py --steps 2 --set train.prompts_per_step=2 ...   # smoke test

Both runs use one recipe: the demo's ``lmix_core/demo/recipes/grpo_logit_average.toml`` as it is now, with only its
``[backend]`` table replaced for the megatron run. That table comes from ``recipes/megatron_tiny_tp2_pp2.toml``
(``tp``, ``pp``, micro-batching, timeout) while the optimiser settings (``lr``, ``weight_decay``, ``grad_clip``,
schedule, ``dtype``, ...) are copied from the demo recipe, so tuning the demo recipe tunes both runs. The HF run is
one process (as ``lmix demo`` runs it); the megatron run is ``torchrun --standalone --nproc_per_node 4 -m lmix run``
(``OMP_NUM_THREADS=1`` unless set).

It prints each run's held-out pass@1 (greedy, the deployed logit average) with the number of problems ``n`` and its
binomial standard error, and the megatron − HF difference with its standard error: from the binomial errors for one
seed, from the spread over seeds for several. Runs whose ``summary.json`` exists are reused with ``--reuse``. The
table is also written to ``OUT/compare.json``; each run's output is in ``OUT/<backend>/seed<k>.log``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
HF_RECIPE = REPO / "lmix_core" / "demo" / "recipes" / "grpo_logit_average.toml"
MEGATRON_RECIPE = REPO / "recipes" / "megatron_tiny_tp2_pp2.toml"

#: backend settings that change the optimisation: taken from the HF (demo) recipe for both runs.
SHARED_BACKEND_KEYS = (
    "dtype",
    "lr",
    "weight_decay",
    "betas",
    "adam_eps",
    "grad_clip",
    "lr_schedule",
    "warmup_steps",
    "total_steps",
    "min_lr_ratio",
)


#: below this held-out accuracy on both backends the comparison is not informative (both near zero).
NEAR_ZERO = 0.05


def megatron_table(hf_recipe: dict[str, Any], megatron_recipe: dict[str, Any], *, tp: int, pp: int) -> dict:
    """The megatron run's recipe: the HF recipe with ``[backend]`` from the megatron recipe, optimiser settings from
    the HF recipe, and ``tp``/``pp`` as given."""
    hf_backend = hf_recipe["backend"]
    backend = {k: v for k, v in megatron_recipe["backend"].items() if k not in SHARED_BACKEND_KEYS}
    backend.update({k: hf_backend[k] for k in SHARED_BACKEND_KEYS if k in hf_backend})
    backend.update(type="megatron", tp=tp, pp=pp)
    return {**hf_recipe, "backend": backend}


def write_recipes(out: Path, *, tp: int, pp: int) -> dict[str, Path]:
    """Write ``OUT/recipes/{hf,megatron}.toml``; returns their paths by backend name."""
    from lmix_core.recipe import dump_toml

    hf = tomllib.loads(HF_RECIPE.read_text())
    mg = megatron_table(hf, tomllib.loads(MEGATRON_RECIPE.read_text()), tp=tp, pp=pp)
    mg["description"] = f"{hf.get('description', HF_RECIPE.stem)} (megatron TP{tp}xPP{pp})"
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    paths = {"hf": out / "recipes" / "hf.toml", "megatron": out / "recipes" / "megatron.toml"}
    header = f"# written by {Path(__file__).name} from {HF_RECIPE.relative_to(REPO)}"
    paths["hf"].write_text(f"{header}\n{dump_toml(hf)}")
    paths["megatron"].write_text(f"{header} and {MEGATRON_RECIPE.relative_to(REPO)}\n{dump_toml(mg)}")
    return paths


def command(backend: str, recipe: Path, overrides: list[str], run_dir: Path, nproc: int) -> list[str]:
    """The ``lmix run`` command line of one run (``torchrun`` for megatron)."""
    lmix = ["-m", "lmix", "run", str(recipe), *overrides, "--out", str(run_dir)]
    if backend == "hf":
        return [sys.executable, *lmix]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*launcher, *lmix]


def run_one(cmd: list[str], run_dir: Path, log: Path, *, reuse: bool) -> dict[str, Any]:
    """Run (or reuse) one training run; returns its ``summary.json``."""
    summary = run_dir / "summary.json"
    if reuse and summary.exists():
        print(f"  reusing {run_dir}", flush=True)
        return json.loads(summary.read_text())
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"  $ {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode != 0 or not summary.exists():
        tail = log.read_text()[-3000:]
        sys.exit(f"compare_hf: the run failed (exit {proc.returncode}); log {log}:\n{tail}")
    print(f"  done in {time.monotonic() - t0:.0f}s", flush=True)
    return json.loads(summary.read_text())


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n else float("nan")


def compare(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-backend mean pass@1 and the megatron − HF difference with its standard error."""
    rows = {}
    for backend, runs in results.items():
        accs = [r["pass@1"] for r in runs]
        n = runs[0]["n"]
        mean = statistics.fmean(accs)
        if len(accs) > 1:
            se = statistics.stdev(accs) / math.sqrt(len(accs))
            se_kind = f"spread over {len(accs)} seeds"
        else:
            se = binomial_se(mean, n)
            se_kind = "binomial"
        rows[backend] = {
            "pass@1": mean,
            "se": se,
            "se_kind": se_kind,
            "n": n,
            "seeds": len(accs),
            "runs": runs,
        }
    diff = rows["megatron"]["pass@1"] - rows["hf"]["pass@1"]
    se_diff = math.hypot(rows["megatron"]["se"], rows["hf"]["se"])
    return {
        "backends": rows,
        "difference": diff,
        "se_difference": se_diff,
        "within_noise": abs(diff) <= 2.0 * se_diff,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sft-model", default="runs/demo/sft/model", help="the SFT model (policy start and reference)"
    )
    p.add_argument("--train", default="runs/demo/data/train.jsonl", help="training questions")
    p.add_argument("--eval", default="runs/demo/data/eval.jsonl", help="held-out questions")
    p.add_argument("--out", default="runs/compare_hf", help="output directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each pair of runs")
    p.add_argument("--steps", type=int, help="train.steps (default: the demo recipe's)")
    p.add_argument("--tp", type=int, default=2, help="tensor-parallel size of the megatron run")
    p.add_argument("--pp", type=int, default=2, help="pipeline-parallel size of the megatron run")
    p.add_argument("--nproc", type=int, help="megatron processes (default tp·pp: one data-parallel replica)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra override, both runs"
    )
    p.add_argument("--only", choices=("hf", "megatron"), help="run one backend (the comparison needs both)")
    p.add_argument("--reuse", action="store_true", help="reuse runs whose summary.json exists")
    args = p.parse_args(argv)

    out = Path(args.out).resolve()
    paths = {k: Path(getattr(args, k)).resolve() for k in ("sft_model", "train", "eval")}
    for name, path in paths.items():
        if not path.exists():
            sys.exit(f"compare_hf: --{name.replace('_', '-')} {path} does not exist; run `lmix demo` first")
    recipes = write_recipes(out, tp=args.tp, pp=args.pp)
    nproc = args.nproc or args.tp * args.pp
    common = [
        f"backend.model={json.dumps(str(paths['sft_model']))}",
        f"data.train={json.dumps(str(paths['train']))}",
        f"data.eval={json.dumps(str(paths['eval']))}",
        'logging.wandb="disabled"',
        "logging.progress=false",
        *([f"train.steps={args.steps}"] if args.steps is not None else []),
        *args.set,
    ]
    backends = [args.only] if args.only else ["hf", "megatron"]
    results: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    for seed in args.seeds:
        for backend in backends:
            label = (
                "hf (1 process)"
                if backend == "hf"
                else f"megatron TP{args.tp}xPP{args.pp} ({nproc} processes)"
            )
            print(f"[seed {seed}] {label}", flush=True)
            run_dir = out / backend / f"seed{seed}"
            cmd = command(backend, recipes[backend], [*common, f"train.seed={seed}"], run_dir, nproc)
            summary = run_one(cmd, run_dir, out / backend / f"seed{seed}.log", reuse=args.reuse)
            ev = summary["final_eval"]
            results[backend].append(
                {"seed": seed, "pass@1": ev["pass@1"], "n": ev["n"], "run_time_s": summary["wall_time_s"]}
            )

    print()
    print(f"{'backend':<10} {'seed':>5} {'pass@1':>8} {'n':>5} {'train+eval':>11}")
    for backend, runs in results.items():
        for r in runs:
            print(
                f"{backend:<10} {r['seed']:>5} {100 * r['pass@1']:>7.1f}% {r['n']:>5} {r['run_time_s']:>10.0f}s"
            )
    if len(results) < 2:
        return 0
    cmp = compare(results)
    print()
    for backend, row in cmp["backends"].items():
        print(
            f"{backend:<9} pass@1 {100 * row['pass@1']:5.1f}% ± {100 * row['se']:.1f} "
            f"(n = {row['n']} held-out problems; ± 1 standard error, {row['se_kind']})"
        )
    if max(row["pass@1"] for row in cmp["backends"].values()) < NEAR_ZERO:
        print(
            f"both accuracies are below {100 * NEAR_ZERO:.0f}%: the comparison says nothing about training "
            f"(train the SFT model until it solves part of the held-out set, then compare again)"
        )
    verdict = "within" if cmp["within_noise"] else "NOT within"
    print(
        f"megatron − hf: {100 * cmp['difference']:+.1f} points ± {100 * cmp['se_difference']:.1f}: {verdict} noise "
        f"(|difference| ≤ 2 standard errors)"
    )
    (out / "compare.json").write_text(json.dumps({"args": vars(args), **cmp}, indent=2))
    print(f"written: {out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
