"""``lmix demo``: the embedded demo, offline on 2 CPU cores.

1. generate the synthetic arithmetic task (solutions ending in ``\\boxed{N}``, held-out problems); half of the
   training demonstrations show the column working, half give only the bare answer (a mixed-quality
   demonstration set, see docs/demo.md);
2. build a tiny Qwen2-architecture model and a local tokenizer, saved as a normal HF directory;
3. SFT it on the demonstrations (``recipes/demo/sft.toml``);
4. run GRPO with ``logit_average`` against the SFT model (``recipes/demo/grpo_logit_average.toml``);
5. print held-out accuracy and format rate (SFT model versus after RL), write ``summary.json`` and a plot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Demo defaults: the model and data sizes that fit the 5-minute budget on 2 CPU cores. SFT imitates both kinds of
#: demonstration; RL with the answer check learns that working the columns out pays (docs/demo.md).
DEMO = {
    "levels": (1, 2),
    "style": "columns",
    "unworked_fraction": 0.5,
    "train_size": 4000,
    "eval_size": 400,
    "model": {"arch": "qwen2", "hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2},
}


def recipes_dir() -> Path:
    """The demo's recipes, shipped in the package (``lmix_core/demo/recipes/``)."""
    from importlib.resources import files

    return Path(str(files("lmix_core.demo") / "recipes"))


def build_inputs(out: Path, seed: int) -> dict[str, Path]:
    """Write the task data and the from-scratch base model under ``out``."""
    from lmix_core.demo.task import generate, write_jsonl
    from lmix_core.synthetic.model import save_tiny_model_dir

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = {
        "train": write_jsonl(
            data / "train.jsonl",
            generate(
                DEMO["train_size"],
                levels=DEMO["levels"],
                seed=seed,
                style=DEMO["style"],
                unworked_fraction=DEMO["unworked_fraction"],
            ),
        ),
        "eval": write_jsonl(
            data / "eval.jsonl",
            generate(DEMO["eval_size"], levels=DEMO["levels"], seed=seed, split="test", style=DEMO["style"]),
        ),
    }
    base = save_tiny_model_dir(out / "base", seed=seed, **DEMO["model"])
    return {"train": paths["train"], "eval": paths["eval"], "base": base}


def stage(name: str, out: Path, overrides: list[str]) -> dict[str, Any]:
    from lmix_core.recipe import load_recipe
    from lmix_core.train.run import train

    recipe = load_recipe(recipes_dir() / f"{name}.toml", tuple(overrides))
    return train(recipe, out, quiet=True)


def evaluate_policy_alone(rl_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Evaluate the RL run's trained policy alone (the other deployment of a logit-averaged run)."""
    from lmix_core.recipe import load_recipe
    from lmix_core.train.run import evaluate_saved

    recipe = load_recipe(recipes_dir() / "grpo_logit_average.toml", tuple(overrides))
    return evaluate_saved(recipe, rl_dir / "model", distribution="policy")


def run_demo(
    out: Path,
    *,
    seed: int,
    wandb: str = "offline",
    sft_overrides: Sequence[str] = (),
    rl_overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the demo's stages under ``out`` and return the summary (also written to ``out/summary.json``).

    ``sft_overrides`` and ``rl_overrides`` are extra ``key=value`` recipe overrides of each stage (tests use them to
    shrink the run, and ``lmix demo --quick`` to shorten the RL stage).
    """
    t0 = time.perf_counter()
    inputs = build_inputs(out, seed)
    common = [
        f"data.train={json.dumps(str(inputs['train']))}",
        f"data.eval={json.dumps(str(inputs['eval']))}",
        f"train.seed={seed}",
        f"logging.wandb={json.dumps(wandb)}",
        "logging.progress=false",
    ]
    print(
        f"[1/3] SFT of a {DEMO['model']['num_layers']}-layer Qwen2-style model on demonstrations "
        f"({100 * DEMO['unworked_fraction']:.0f}% give only the answer) ...",
        flush=True,
    )
    sft = stage(
        "sft", out / "sft", [f"backend.model={json.dumps(str(inputs['base']))}", *common, *sft_overrides]
    )
    rl_over = [f"backend.model={json.dumps(str(out / 'sft' / 'model'))}", *common, *rl_overrides]
    print("[2/3] GRPO with logit averaging against the SFT model ...", flush=True)
    rl = stage("grpo_logit_average", out / "rl", rl_over)
    print("[3/3] evaluating the trained policy alone ...", flush=True)
    alone = evaluate_policy_alone(out / "rl", rl_over)
    rows = {
        "SFT model": sft["final_eval"],
        "after RL (logit average, deployed)": rl["final_eval"],
        "after RL (trained policy alone)": alone,
    }
    summary = {
        "seed": seed,
        "wall_time_s": time.perf_counter() - t0,
        "results": {k: {m: v.get(m) for m in ("pass@1", "format_rate", "nll", "n")} for k, v in rows.items()},
        "rl_gain_points": 100.0 * (rl["final_eval"]["pass@1"] - sft["final_eval"]["pass@1"]),
    }
    from lmix_core.plotting import plot_runs

    summary["plot"] = str(plot_runs([out / "sft", out / "rl"], out / "curves.png", sequential=True))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_table(summary)
    return summary


def print_table(summary: dict[str, Any]) -> None:
    print()
    print(
        f"{'held-out (' + str(next(iter(summary['results'].values()))['n']) + ' problems)':<40} {'accuracy':>9} {'format':>8}"
    )
    for name, r in summary["results"].items():
        fmt = "-" if r["format_rate"] is None else f"{100 * r['format_rate']:.1f}%"
        print(f"{name:<40} {100 * r['pass@1']:>8.1f}% {fmt:>8}")
    print(
        f"\nRL gain over SFT: {summary['rl_gain_points']:+.1f} points; {summary['wall_time_s']:.0f}s in all"
    )
    print(f"summary: {summary['plot'].rsplit('/', 1)[0]}/summary.json, plot: {summary['plot']}")


def demo_command(args: Any) -> int:
    seed = int(getattr(args, "seed", 0) or 0)
    out = Path(getattr(args, "out", None) or "runs/demo")
    quick = ["train.steps=10"] if getattr(args, "quick", False) else []
    run_demo(out, seed=seed, rl_overrides=quick)
    return 0


__all__ = ["DEMO", "demo_command", "run_demo"]
