"""``lmix run RECIPE [--out DIR] [--resume] [key=value ...]``: validate, build, train, evaluate, export."""

from __future__ import annotations

import json
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lmix_core.errors import LmixError
from lmix_core.evaluation import append_eval, deployment, evaluate
from lmix_core.interfaces.backend import BackendContext
from lmix_core.train.components import Components, RewardSuite
from lmix_core.train.logging import batch_line, quiet_other_rank
from lmix_core.train.loop import Trainer


def default_out_dir(recipe: Any) -> Path:
    return Path("runs") / f"{Path(recipe.source).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def build(recipe: Any, out_dir: Path, *, data: Any = None) -> Components:
    """Build every component of a validated recipe, the backend last (it loads models).

    The data is read and checked first (:func:`~lmix_core.data.checks.load_recipe_data`), so its errors come before
    any model loads; ``data`` (a :class:`~lmix_core.data.checks.RecipeData`) replaces that read.
    """
    from lmix_core.data.checks import load_recipe_data
    from lmix_core.data.loading import render_prompt

    data = load_recipe_data(recipe) if data is None else data
    combiner = recipe.combiner.build()
    advantage = recipe.advantage.build()
    loss = recipe.loss.build()
    mixer = recipe.mixer.build()
    suite = RewardSuite([(spec.name, spec.build(), spec.weight) for spec in recipe.rewards])
    # the first reference is the initial policy unless backend.references names another: a KL penalty in the loss
    # or the reward, and a mixer's divergence-to-initial (sasr), all read it
    needs_ref = loss.needs_ref_logp or mixer.needs_reference or recipe.train.kl_in_reward_coef > 0
    num_refs = max(combiner.num_references, 1 if needs_ref else 0)
    context = BackendContext(
        combiner=combiner,
        num_references=num_refs,
        num_optimizer_states=type(mixer).num_optimizer_states,
        update_weights=mixer.update_weights,
        seed=recipe.train.seed,
        out_dir=out_dir,
    )
    backend = recipe.backend.cls(recipe.backend.config, context)
    return Components(
        backend=backend,
        combiner=combiner,
        advantage=advantage,
        loss=loss,
        mixer=mixer,
        rewards=suite,
        train=recipe.train,
        sampling=recipe.sampling,
        eval=recipe.eval,
        logging=recipe.logging,
        train_examples=data.train,
        eval_examples=data.eval,
        render_prompt=partial(render_prompt, config=recipe.data),
        resolved=recipe.resolved(),
        out_dir=out_dir,
    )


def provenance_line(recipe: Any) -> str:
    return " ".join(
        f"{p['kind']}={p['name']} ({p['distribution']} {p['version']})" for p in recipe.provenance()
    )


def train(recipe: Any, out_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run a validated recipe into ``out_dir``; returns the summary written to ``summary.json``."""
    from lmix_core.recipe import dump_toml

    torch.manual_seed(recipe.train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = build(recipe, out_dir)
    trainer = Trainer(parts, out_dir)
    main = parts.backend.is_main
    if main:
        (out_dir / "recipe.toml").write_text(dump_toml(recipe.resolved()))
        (out_dir / "provenance.json").write_text(json.dumps(recipe.provenance(), indent=2))
        if not resume and (out_dir / "eval.jsonl").exists():
            (out_dir / "eval.jsonl").unlink()
        if not quiet:
            print(f"lmix run: {provenance_line(recipe)}", flush=True)
            print(f"lmix run: {batch_line(recipe.train, parts.backend.world_size)} -> {out_dir}", flush=True)
    deploy = deployment(parts.combiner, parts.eval)

    def run_eval(step: int) -> dict[str, Any]:
        if not parts.eval_examples:
            return {}
        if main and not quiet and step == recipe.train.steps:
            n = min(len(parts.eval_examples), parts.eval.max_examples or len(parts.eval_examples))
            print(f"lmix run: evaluating on {n} held-out questions ({deploy})", flush=True)
        result = evaluate(
            parts.backend,
            parts.rewards,
            parts.eval_examples,
            parts.render_prompt,
            parts.eval,
            parts.sampling,
            distribution=deploy,
            seed=recipe.train.seed,
            step=step,
        )
        record = {"step": step, "deploy": deploy, **result}
        if main:
            append_eval(out_dir, record)
        return record

    t0 = time.perf_counter()
    try:
        last = trainer.run(resume=resume, evaluate=run_eval)
        model_dir = out_dir / "model"
        if main and model_dir.exists():
            shutil.rmtree(model_dir)
        parts.backend.barrier()
        if main and not quiet:
            print(f"lmix run: writing the model to {model_dir}", flush=True)
        parts.backend.save_pretrained(model_dir)
    finally:
        parts.rewards.close()
        parts.backend.close()
    summary = {
        "recipe": str(recipe.source),
        "steps": recipe.train.steps,
        "final_eval": last,
        "wall_time_s": time.perf_counter() - t0,
        "model": str(out_dir / "model"),
    }
    if main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _main_process() -> bool:
    """True on the process that prints and writes run outputs: global rank 0 under torchrun, else always."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def run_command(args: Any) -> int:
    """CLI entry: ``args.recipe``, ``args.out``, ``args.resume``, ``args.overrides``."""
    from lmix_core.recipe import load_recipe

    t_start = time.perf_counter()
    if not _main_process():
        quiet_other_rank()
    recipe = load_recipe(args.recipe, tuple(args.overrides or ()))
    out = Path(args.out) if args.out else default_out_dir(recipe)
    if args.resume and not out.exists():
        raise LmixError(
            f"--resume: run directory {str(out)!r} does not exist; pass the --out of the run to resume"
        )
    summary = train(recipe, out, resume=bool(args.resume))
    if not _main_process():
        return 0
    wall = time.perf_counter() - t_start  # the whole command: loading, training, evaluation, export
    pass1 = (summary["final_eval"] or {}).get("pass@1")
    score = "" if pass1 is None else f"; held-out pass@1 {pass1:.3f}"
    print(f"lmix run: done in {wall:.1f}s{score} -> {out}")
    return 0


def evaluate_saved(
    recipe: Any,
    model_dir: Path,
    *,
    distribution: str | None = None,
    examples: Any = None,
    on_sample: Any = None,
) -> dict[str, Any]:
    """Evaluate a saved model under a recipe's components (rewards, eval settings, references).

    The recipe's ``backend.model`` becomes ``model_dir``; when the combiner needs references and the recipe names
    none, the recipe's original ``backend.model`` (the model training started from) is the reference, as it was
    during training. ``examples`` (already read and checked) replace the recipe's data; ``on_sample`` is passed to
    :func:`~lmix_core.evaluation.evaluate`.
    """
    import attrs

    from lmix_core.data.checks import RecipeData

    cfg = recipe.backend.config
    refs = tuple(cfg.references) or (cfg.model,)
    backend_spec = attrs.evolve(
        recipe.backend, config=attrs.evolve(cfg, model=str(model_dir), references=refs)
    )
    recipe = attrs.evolve(recipe, backend=backend_spec)
    data = None if examples is None else RecipeData(train=list(examples), eval=list(examples))
    parts = build(recipe, model_dir.parent, data=data)
    try:
        deploy = distribution or deployment(parts.combiner, parts.eval)
        result = evaluate(
            parts.backend,
            parts.rewards,
            parts.eval_examples or parts.train_examples,
            parts.render_prompt,
            parts.eval,
            parts.sampling,
            distribution=deploy,
            seed=recipe.train.seed,
            step=recipe.train.steps,
            on_sample=on_sample,
        )
        return {"deploy": deploy, **result}
    finally:
        parts.rewards.close()
        parts.backend.close()
