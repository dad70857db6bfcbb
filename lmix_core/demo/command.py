"""``lmix demo``: the embedded demo, offline on 2 CPU cores.

1. generate the synthetic arithmetic task (solutions ending in ``\\boxed{N}``, held-out problems); half of the
   training demonstrations show the column working, half give only the bare answer (a mixed-quality
   demonstration set, see docs/demo.md);
2. build a tiny Qwen2-architecture model and a local tokenizer, saved as a normal HF directory;
3. SFT it on the demonstrations (the shipped recipe ``demo:sft``, ``lmix_core/demo/recipes/sft.toml``);
4. run GRPO with ``logit_average`` against the SFT model (``demo:grpo_logit_average``);
5. print held-out accuracy and format rate (SFT model versus after RL), write ``summary.json`` and a plot.

Each stage's recipe is the shipped one with the demo's paths, seed and logging filled in, built with
:func:`~lmix_core.recipe.recipe_from_mapping` (no temporary files, no override strings).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmix_core.recipe import merged

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


#: ``lmix demo --quick``: a shorter RL stage (the SFT stage is unchanged).
QUICK: dict[str, Any] = {"rl": {"train": {"steps": 10}}}

#: ``lmix demo --smoke``: every stage at a micro size, a pipeline check for CI and fresh installs (well under a
#: minute on 2 CPU cores; its accuracies mean nothing).
SMOKE: dict[str, Any] = {
    "sizes": {"train_size": 64, "eval_size": 16},
    "sft": {"train": {"steps": 4, "prompts_per_step": 8}, "backend": {"warmup_steps": 0, "total_steps": 4}},
    "rl": {
        "train": {"steps": 2, "prompts_per_step": 2, "group_size": 2},
        "backend": {"warmup_steps": 0},
        "sampling": {"max_new_tokens": 16},
    },
}


def build_inputs(out: Path, seed: int, sizes: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write the task data and the from-scratch base model under ``out``.

    ``sizes`` replaces entries of :data:`DEMO` (``train_size``, ``eval_size``, ...).
    """
    from lmix_core.demo.task import generate, write_jsonl
    from lmix_core.synthetic.model import save_tiny_model_dir

    demo = merged(DEMO, sizes or {})
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = {
        "train": write_jsonl(
            data / "train.jsonl",
            generate(
                demo["train_size"],
                levels=demo["levels"],
                seed=seed,
                style=demo["style"],
                unworked_fraction=demo["unworked_fraction"],
            ),
        ),
        "eval": write_jsonl(
            data / "eval.jsonl",
            generate(demo["eval_size"], levels=demo["levels"], seed=seed, split="test", style=demo["style"]),
        ),
    }
    base = save_tiny_model_dir(out / "base", seed=seed, **demo["model"])
    return {"train": paths["train"], "eval": paths["eval"], "base": base}


def stage_recipe(name: str, changes: Mapping[str, Any]) -> Any:
    """The shipped recipe ``demo:<name>`` with ``changes`` merged in, validated."""
    from lmix_core.recipe import recipe_from_mapping
    from lmix_core.shipped_recipes import shipped_mapping

    return recipe_from_mapping(merged(shipped_mapping(f"demo:{name}"), changes), source=f"demo:{name}")


def run_demo(
    out: Path,
    *,
    seed: int,
    wandb: str = "offline",
    sizes: Mapping[str, Any] | None = None,
    sft: Mapping[str, Any] | None = None,
    rl: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the demo's stages under ``out`` and return the summary (also written to ``out/summary.json``).

    Args:
        out: the output folder.
        seed: seed of the data, the base model and both stages.
        wandb: ``logging.wandb`` of both stages.
        sizes: entries of :data:`DEMO` to replace (``train_size``, ``eval_size``).
        sft: recipe tables merged into the SFT stage's recipe (e.g. ``{"train": {"steps": 2}}``).
        rl: the same for the RL stage (:data:`QUICK` and :data:`SMOKE` use these).
    """
    from lmix_core.plotting import plot_runs
    from lmix_core.train.run import evaluate_saved, train

    t0 = time.perf_counter()
    demo = merged(DEMO, sizes or {})
    inputs = build_inputs(out, seed, sizes)
    common = {
        "data": {"train": str(inputs["train"]), "eval": str(inputs["eval"])},
        "train": {"seed": seed},
        "logging": {"wandb": wandb, "progress": False},
    }
    print(
        f"[1/3] SFT of a {demo['model']['num_layers']}-layer Qwen2-style model on demonstrations "
        f"({100 * demo['unworked_fraction']:.0f}% give only the answer) ...",
        flush=True,
    )
    sft_recipe = stage_recipe(
        "sft", merged(merged(common, {"backend": {"model": str(inputs["base"])}}), sft or {})
    )
    sft_result = train(sft_recipe, out / "sft", start="overwrite", quiet=True)
    rl_recipe = stage_recipe(
        "grpo_logit_average",
        merged(merged(common, {"backend": {"model": str(out / "sft" / "model")}}), rl or {}),
    )
    print("[2/3] GRPO with logit averaging against the SFT model ...", flush=True)
    rl_result = train(rl_recipe, out / "rl", start="overwrite", quiet=True)
    print("[3/3] evaluating the trained policy alone ...", flush=True)
    alone = evaluate_saved(rl_recipe, out / "rl" / "model", distribution="policy")
    rows = {
        "SFT model": sft_result["final_eval"],
        "after RL (logit average, deployed)": rl_result["final_eval"],
        "after RL (trained policy alone)": alone,
    }
    summary = {
        "seed": seed,
        "wall_time_s": time.perf_counter() - t0,
        "results": {k: {m: v.get(m) for m in ("pass@1", "format_rate", "nll", "n")} for k, v in rows.items()},
        "rl_gain_points": 100.0 * (rl_result["final_eval"]["pass@1"] - sft_result["final_eval"]["pass@1"]),
    }
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
    mode = SMOKE if getattr(args, "smoke", False) else QUICK if getattr(args, "quick", False) else {}
    run_demo(out, seed=seed, sizes=mode.get("sizes"), sft=mode.get("sft"), rl=mode.get("rl"))
    return 0


__all__ = ["DEMO", "QUICK", "SMOKE", "build_inputs", "demo_command", "merged", "run_demo", "stage_recipe"]
