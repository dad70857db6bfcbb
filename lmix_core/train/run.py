"""``lmix run RECIPE [--out DIR] [--resume | --resume-if-possible | --overwrite] [key=value ...]``: validate, build, train, evaluate, export."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from lmix_core.errors import RunDirectoryError, RunInterrupted
from lmix_core.evaluation import append_eval, deployment, evaluate
from lmix_core.interfaces.backend import BackendContext
from lmix_core.train.components import Components, RewardSuite
from lmix_core.train.logging import batch_line, quiet_other_rank
from lmix_core.train.loop import Trainer
from lmix_core.types import Distribution


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
        rollout_engine=recipe.rollout_engine.build,
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


#: How :func:`train` treats ``out_dir`` (``lmix run``'s flags: none, ``--overwrite``, ``--resume``,
#: ``--resume-if-possible``).
Start = Literal["new", "overwrite", "resume", "resume_if_possible"]
#: What a run writes into its directory; ``--overwrite`` deletes these, and any of them marks a run as present.
RUN_FILES = (
    "recipe.toml",
    "provenance.json",
    "metrics.jsonl",
    "eval.jsonl",
    "summary.json",
    "model",
    "checkpoints",
    "wandb",
)


def _remove_run_files(out_dir: Path) -> None:
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def plan_start(out_dir: Path, start: Start, steps: int) -> tuple[str, dict[str, Any] | None]:
    """What :func:`train` does with ``out_dir``: ``("start", None)``, ``("resume", None)`` or ``("complete", summary)``.

    Raises RunDirectoryError (a usage error, exit status 2) when ``start`` does not fit the directory: ``new`` into a
    directory that holds a run, ``resume`` without a checkpoint, a finished run asked to run fewer steps. Only the
    main process deletes files (``overwrite``, or ``resume_if_possible`` over a run that has no checkpoint).
    """
    from lmix_core.train.checkpoint import latest, read_json

    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    main = _main_process()
    if start == "new":
        if existing:
            raise RunDirectoryError(
                f"{str(out_dir)!r} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
                "--overwrite to replace it, or another --out"
            )
        return "start", None
    if start == "overwrite":
        if main:
            _remove_run_files(out_dir)
        return "start", None
    if start == "resume" and not out_dir.exists():
        raise RunDirectoryError(
            f"--resume: run directory {str(out_dir)!r} does not exist; pass the --out of the run to resume"
        )
    summary = read_json(out_dir / "summary.json") if (out_dir / "summary.json").exists() else None
    finished = summary.get("steps") if isinstance(summary, dict) else None
    if isinstance(finished, int) and finished == steps:
        return "complete", summary
    if isinstance(finished, int) and finished > steps:
        raise RunDirectoryError(
            f"{str(out_dir)!r} holds a run finished at step {finished}; train.steps = {steps} cannot shorten it "
            "(--overwrite starts it again)"
        )
    ckpt = latest(out_dir, warn=lambda _m: None)  # the restore warns (once) when it falls back
    if ckpt is not None:
        if main and summary is not None:  # extending a finished run: the old summary no longer describes it
            (out_dir / "summary.json").unlink()
        return "resume", None
    if summary is not None:
        raise RunDirectoryError(
            f"{str(out_dir)!r} holds a run finished at step {finished} without a checkpoint to continue from "
            "(train.final_checkpoint = 'skip'), so it cannot be extended to train.steps = "
            f"{steps}; --overwrite starts it again"
        )
    if start == "resume" and existing:
        raise RunDirectoryError(
            f"--resume: {str(out_dir)!r} holds a run ({', '.join(existing)}) but no checkpoint to resume from "
            "(one is written every train.save_every steps, at the end and when SIGTERM/SIGINT stops a run); "
            "--overwrite starts it again, --resume-if-possible resumes when there is a checkpoint and starts "
            "otherwise"
        )
    if start == "resume":
        raise RunDirectoryError(
            f"--resume: {str(out_dir)!r} holds no run to resume; leave out --resume to start one there"
        )
    if main:
        _remove_run_files(out_dir)
    return "start", None


def train(recipe: Any, out_dir: Path, *, start: Start = "new", quiet: bool = False) -> dict[str, Any]:
    """Run a validated recipe into ``out_dir``; returns the summary written to ``summary.json``.

    ``start`` says what to do with a run already in ``out_dir`` (:func:`plan_start`). A finished run asked to
    resume is left untouched: its summary is returned with ``"already_complete": True``. Raises
    :class:`~lmix_core.errors.RunInterrupted` after writing a checkpoint when SIGTERM or SIGINT stops training.
    """
    from lmix_core.recipe import dump_toml

    action, finished = plan_start(out_dir, start, recipe.train.steps)
    if action == "complete":
        if not quiet and _main_process():
            n = recipe.train.steps
            print(
                f"lmix run: {str(out_dir)!r} is already complete (step {n} of {n}); nothing to do", flush=True
            )
        return {**(finished or {}), "already_complete": True}  # "complete" comes with the summary
    resume = action == "resume"
    torch.manual_seed(recipe.train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = build(recipe, out_dir)
    trainer = Trainer(parts, out_dir)
    main = parts.backend.is_main
    if main:
        (out_dir / "recipe.toml").write_text(dump_toml(recipe.resolved()))
        (out_dir / "provenance.json").write_text(json.dumps(recipe.provenance(), indent=2))
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
        last = trainer.run(
            resume=resume, evaluate=run_eval, final_checkpoint=recipe.train.final_checkpoint == "save"
        )
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
    """CLI entry: ``args.recipe``, ``args.out``, ``args.start`` (a :data:`Start`), ``args.overrides``."""
    from lmix_core.recipe import load_recipe

    t_start = time.perf_counter()
    if not _main_process():
        quiet_other_rank()
    recipe = load_recipe(args.recipe, tuple(args.overrides or ()))
    out = Path(args.out) if args.out else default_out_dir(recipe)
    try:
        summary = train(recipe, out, start=args.start)
    except RunInterrupted as exc:
        if _main_process():
            print(f"lmix run: {exc}. Resume with the same command and --resume", file=sys.stderr, flush=True)
        return 128 + exc.signum
    if not _main_process() or summary.get("already_complete"):
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
    distribution: Distribution | None = None,
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

    cls, cfg = recipe.backend.cls, recipe.backend.config
    models = cls.models(cfg)  # what the backend's Config names, as its class declares
    refs = models.references or (models.policy,)
    backend_spec = attrs.evolve(
        recipe.backend, config=cls.with_models(cfg, policy=str(model_dir), references=refs)
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
