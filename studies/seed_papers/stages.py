"""The study's stages: data, pretraining from scratch with kept checkpoints, post-training runs, evaluation.

Every stage writes under the study's output folder (:class:`Layout`) and is skipped when its result is already
there, so an interrupted study resumes where it stopped:

* ``data/``: the task's train and held-out problems, the probe and the pretraining corpus (``data/sizes.json``
  records what they were drawn with);
* ``pretrain/seed<P>/``: the random-init model ``init/``, the pretraining run ``run/`` and the kept checkpoints
  ``ck1/``, ``ck2/``, ``ck3/`` (Hugging Face model folders), each with its evaluation ``ck<i>.result.json``;
* ``seed<S>/<recipe>@<start>/``: one ``lmix run`` directory per run, plus the study's ``result.json`` (held-out
  task and probe metrics per deployment, and times) and ``command.txt`` (the equivalent ``lmix run`` command).

A run with ``result.json`` is skipped; one with ``summary.json`` (trained, not yet evaluated) is only evaluated;
one with a checkpoint continues from it (``--resume``); anything else starts again.

Pretraining runs in segments, one per kept checkpoint: ``lmix run studies/seed_papers/recipes/pretrain.toml train.steps=<c>
--resume``; the cosine schedule spans ``backend.total_steps`` (the last checkpoint), and data order, sampling and
RNG state are functions of the step and the checkpoint, so the segments reproduce one straight run while each
segment's exported ``model/`` is copied out as that checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs

from lmix_core.compare.runner import ExactMatchScorer, step_seconds
from studies.seed_papers.plan import Run, schedule_overrides
from studies.seed_papers.sizes import PostSizes, Sizes

Log = Callable[[str], None]

#: The prompt as the corpus writes it: ``Compute 23+45*3.`` then a newline (no chat template).
PROMPT_TEMPLATE = "{prompt}\n"


#: The study's folder. The study is part of the repository, not of the installed packages: it runs from a checkout
#: (``python -m studies.seed_papers`` in the repository root) and writes the repository's ``docs/seed-study.md``.
STUDY_DIR = Path(__file__).resolve().parent
#: The checkout the study belongs to.
REPO = STUDY_DIR.parents[1]


def recipes_dir() -> Path:
    """The study's recipes, ``studies/seed_papers/recipes/``."""
    return STUDY_DIR / "recipes"


def q(value: Any) -> str:
    """A value as a TOML literal for a ``key=value`` override (strings quoted, so paths stay strings)."""
    return json.dumps(str(value)) if isinstance(value, str | Path) else json.dumps(value)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a half-written result must never look finished)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@attrs.frozen
class Layout:
    """Where everything goes under the study's output folder ``out``."""

    out: Path

    @property
    def data(self) -> Path:
        return self.out / "data"

    def pretrain_root(self, pseed: int) -> Path:
        return self.out / "pretrain" / f"seed{pseed}"

    def checkpoint(self, pseed: int, ck: str) -> Path:
        return self.pretrain_root(pseed) / ck

    def base_result(self, pseed: int, ck: str) -> Path:
        return self.pretrain_root(pseed) / f"{ck}.result.json"

    def run_dir(self, seed: int, name: str) -> Path:
        return self.out / f"seed{seed}" / name

    def start_model(self, run: Run, seed: int, pseed: int) -> Path:
        """The model a run starts from: a pretrained checkpoint, or the seed's SFT model."""
        if run.start == "sft":
            return self.run_dir(seed, "sft@ck3") / "model"
        return self.checkpoint(pseed, run.start)


def pretrain_seed(sizes: Sizes, seed: int) -> int:
    """The pretraining seed a training seed's runs start from (shared unless ``pretrain.per_seed``)."""
    return seed if sizes.pretrain.per_seed else sizes.pretrain.seed


def logging_overrides() -> list[str]:
    return ['logging.wandb="disabled"', "logging.progress=false"]


# -- data ------------------------------------------------------------------------------------------------------


def write_data(layout: Layout, sizes: Sizes, log: Log) -> dict[str, Path]:
    """Draw the task, probe and corpus files (skipped when ``data/sizes.json`` matches ``sizes.data``)."""
    from lmix_core.demo.task import generate, generate_corpus, generate_probe, write_jsonl

    d = sizes.data
    paths = {name: layout.data / f"{name}.jsonl" for name in ("train", "eval", "probe", "corpus")}
    marker = layout.data / "sizes.json"
    wanted = attrs.asdict(d)
    wanted["levels"] = list(d.levels)
    if marker.exists() and read_json(marker) == wanted and all(p.exists() for p in paths.values()):
        return paths
    t0 = time.perf_counter()
    log(
        f"data: {d.train_size} train / {d.eval_size} held-out problems (levels {list(d.levels)}), "
        f"{d.probe_size} probe items, {d.corpus_documents} corpus documents"
    )
    marker.unlink(missing_ok=True)
    write_jsonl(
        paths["train"], generate(d.train_size, levels=d.levels, seed=d.seed, split="train", style=d.style)
    )
    write_jsonl(
        paths["eval"], generate(d.eval_size, levels=d.levels, seed=d.seed, split="test", style=d.style)
    )
    write_jsonl(paths["probe"], generate_probe(d.probe_size, seed=d.seed, split="test"))
    corpus = generate_corpus(
        d.corpus_documents,
        levels=d.levels,
        seed=d.seed + 1000,  # another stream than the post-training problems (both are train-split)
        style=d.style,
        items_per_document=d.items_per_document,
        mix={k: w for k, w in d.corpus_mix.items() if w > 0},
    )
    write_jsonl(paths["corpus"], corpus)
    write_json(marker, wanted)
    log(f"data: written in {time.perf_counter() - t0:.1f}s")
    return paths


# -- pretraining -----------------------------------------------------------------------------------------------


def pretrain_overrides(layout: Layout, sizes: Sizes, pseed: int, steps: int) -> list[str]:
    p = sizes.pretrain
    return [
        f"backend.model={q(layout.pretrain_root(pseed) / 'init')}",
        f"backend.lr={p.lr}",
        f"backend.warmup_steps={p.warmup_steps}",
        f"backend.total_steps={p.steps}",
        f"backend.micro_batch_size={p.docs_per_step}",
        f"data.train={q(layout.data / 'corpus.jsonl')}",
        f"train.steps={steps}",
        f"train.prompts_per_step={p.docs_per_step}",
        f"train.seed={pseed}",
        f"train.keep_checkpoints={len(p.checkpoints)}",
        *logging_overrides(),
    ]


def pretrain(layout: Layout, sizes: Sizes, pseed: int, log: Log) -> dict[str, Path]:
    """Pretrain from scratch, keeping ``ck1``, ``ck2``, ``ck3`` as HF folders (each skipped when present)."""
    from lmix_core.recipe import load_recipe
    from lmix_core.synthetic.model import save_tiny_model_dir
    from lmix_core.train.run import train

    root = layout.pretrain_root(pseed)
    init = root / "init"
    if not (init / "config.json").exists():
        save_tiny_model_dir(init, seed=pseed, **attrs.asdict(sizes.model))
    out: dict[str, Path] = {}
    for i, step in enumerate(sizes.pretrain.checkpoints, 1):
        ck = f"ck{i}"
        target = layout.checkpoint(pseed, ck)
        out[ck] = target
        if (target / "config.json").exists():
            continue
        overrides = pretrain_overrides(layout, sizes, pseed, step)
        record_command(root / f"{ck}.command.txt", "pretrain", overrides, root / "run", resume=True)
        log(f"pretrain seed {pseed}: steps -> {step} ({ck})")
        summary = train(
            load_recipe(recipes_dir() / "pretrain.toml", tuple(overrides)),
            root / "run",
            start="resume_if_possible",
            quiet=True,
        )
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(summary["model"]), tmp)
        os.replace(tmp, target)
    return out


# -- post-training runs ----------------------------------------------------------------------------------------


def budget_overrides(budget: PostSizes) -> list[str]:
    return [
        f"train.steps={budget.steps}",
        f"train.prompts_per_step={budget.prompts_per_step}",
        f"train.group_size={budget.group_size}",
        f"sampling.max_new_tokens={budget.max_new_tokens}",
        f"backend.lr={budget.lr}",
        f"backend.warmup_steps={budget.warmup_steps}",
    ]


def run_overrides(layout: Layout, sizes: Sizes, run: Run, seed: int) -> list[str]:
    """Every override of a post-training run: start model, data, seed, budget, schedules, evaluation."""
    budget = sizes.from_sft if run.budget == "from_sft" else sizes.post
    out = [
        f"backend.model={q(layout.start_model(run, seed, pretrain_seed(sizes, seed)))}",
        f"data.train={q(layout.data / 'train.jsonl')}",
        f"data.eval={q(layout.data / 'eval.jsonl')}",
        f"train.seed={seed}",
        *budget_overrides(budget),
        *schedule_overrides(run.recipe, budget),
        f"eval.samples={sizes.eval.samples}",
        f"eval.temperature={sizes.eval.temperature}",
        *logging_overrides(),
    ]
    if run.recipe == "sasr":
        out.append(f"mixer.seed={seed}")  # SASR draws SFT/GRPO from its own seeded generator
    return out


def record_command(
    path: Path, recipe: str, overrides: Sequence[str], out: Path, *, resume: bool = False
) -> str:
    """Write (and return) the ``lmix run`` command equivalent to a stage, with shell quoting."""
    import shlex

    parts = ["lmix", "run", f"studies/seed_papers/recipes/{recipe}.toml", *overrides, "--out", str(out)]
    if resume:
        parts.append("--resume-if-possible")
    text = " ".join(shlex.quote(p) for p in parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return text


def execute(layout: Layout, sizes: Sizes, run: Run, seed: int, log: Log) -> dict[str, Any]:
    """Train (or resume) one run and evaluate it; returns its ``result.json`` (read back when already there)."""
    from lmix_core.recipe import load_recipe
    from lmix_core.train import checkpoint
    from lmix_core.train.run import train

    run_dir = layout.run_dir(seed, run.name)
    result_file = run_dir / "result.json"
    if result_file.exists():
        log(f"  {run.name}: finished earlier, skipped")
        return read_json(result_file)
    overrides = run_overrides(layout, sizes, run, seed)
    command = record_command(run_dir / "command.txt", run.recipe, overrides, run_dir)
    recipe = load_recipe(recipes_dir() / f"{run.recipe}.toml", tuple(overrides))
    t0 = time.perf_counter()
    if (run_dir / "summary.json").exists() and (run_dir / "model" / "config.json").exists():
        summary = read_json(run_dir / "summary.json")
    else:
        resume = checkpoint.latest(run_dir) is not None
        if resume:
            log(f"  {run.name}: resuming from its latest checkpoint")
        summary = train(recipe, run_dir, start="resume" if resume else "overwrite", quiet=True)
    train_wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    evals = evaluate_model(
        recipe,
        run_dir / "model",
        deployments=run.deployments,
        sizes=sizes,
        probe=layout.data / "probe.jsonl",
        seed=seed,
        task_done={"default": summary.get("final_eval") or {}},
    )
    result = {
        "run": run.name,
        "recipe": run.recipe,
        "start": run.start,
        "seed": seed,
        "budget": attrs.asdict(sizes.from_sft if run.budget == "from_sft" else sizes.post),
        "command": command,
        "evals": evals,
        "train_s": step_seconds(run_dir),
        "run_wall_s": float(summary.get("wall_time_s", train_wall)),
        "eval_s": time.perf_counter() - t1,
    }
    write_json(result_file, result)
    return result


def evaluate_base(layout: Layout, sizes: Sizes, pseed: int, ck: str, log: Log) -> dict[str, Any]:
    """Evaluate a pretrained checkpoint as it is (held-out task and probe), once per pretraining seed."""
    from lmix_core.recipe import load_recipe

    path = layout.base_result(pseed, ck)
    if path.exists():
        return read_json(path)
    log(f"evaluating pretrained {ck} (pretraining seed {pseed})")
    overrides = [
        f"backend.model={q(layout.checkpoint(pseed, ck))}",
        f"data.train={q(layout.data / 'train.jsonl')}",
        f"data.eval={q(layout.data / 'eval.jsonl')}",
        f"train.seed={pseed}",
        *budget_overrides(sizes.post),
        f"eval.samples={sizes.eval.samples}",
        f"eval.temperature={sizes.eval.temperature}",
        *logging_overrides(),
    ]
    recipe = load_recipe(recipes_dir() / "rl.toml", tuple(overrides))
    t0 = time.perf_counter()
    evals = evaluate_model(
        recipe,
        layout.checkpoint(pseed, ck),
        deployments=("default",),
        sizes=sizes,
        probe=layout.data / "probe.jsonl",
        seed=pseed,
        task_done={},
    )
    result = {
        "run": f"base@{ck}",
        "seed": pseed,
        "evals": evals,
        "train_s": 0.0,
        "eval_s": time.perf_counter() - t0,
    }
    write_json(path, result)
    return result


# -- evaluation ------------------------------------------------------------------------------------------------


def answer_nll(backend: Any, examples: Sequence[Any], render: Any, distribution: str) -> float:
    """Token-mean NLL of each example's answer given its prompt, under ``distribution``; no EOS token is scored.

    :func:`lmix_core.evaluation.evaluate`'s ``nll`` scores the demonstration and an EOS under the policy alone;
    probe answers are a few characters, so an EOS that fine-tuning made likelier would move that number by itself.
    """
    import attrs as _attrs

    from lmix_core.evaluation import EVAL_ROWS
    from lmix_core.train.batching import demonstration_batch

    tok = backend.tokenizer
    total, count = 0.0, 0
    for start in range(0, len(examples), EVAL_ROWS):
        chunk = examples[start : start + EVAL_ROWS]
        prompts = [tok(render(tok, ex), add_special_tokens=False)["input_ids"] for ex in chunk]
        answers = [tok(ex.answer, add_special_tokens=False)["input_ids"] for ex in chunk]
        batch = demonstration_batch(prompts, answers, tok.pad_token_id or 0)
        batch = _attrs.evolve(batch, distribution=distribution)
        stats = backend.score(batch, temperature=1.0)
        total += float(-(stats.logp * batch.loss_mask).sum())
        count += int(batch.loss_mask.sum())
    return total / max(count, 1)


def _summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics kept from :func:`lmix_core.evaluation.evaluate`'s result (pass@k keys kept as they are)."""
    return {
        k: v for k, v in result.items() if k.startswith("pass@") or k in ("format_rate", "nll", "n", "deploy")
    }


def evaluate_model(
    recipe: Any,
    model_dir: Path,
    *,
    deployments: Sequence[str],
    sizes: Sizes,
    probe: Path,
    seed: int,
    task_done: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Held-out task and probe metrics of a saved model for each deployment, with one backend.

    The recipe's ``backend.model`` becomes ``model_dir``; its references (or, when it names none, its original
    ``backend.model``, the model the run started from) stay the references, as in
    :func:`lmix_core.train.run.evaluate_saved`. The task evaluation that ``lmix run`` already did at the end of
    training (``task_done``) is reused. The probe is scored greedily by exact match, and by the mean NLL of its
    answers given the prompts.

    Returns:
        ``{deployment: {"task": {pass@1, pass@k, format_rate, nll, n, deploy}, "probe": {pass@1, nll, n}}}``: the
        task's ``nll`` is the policy's (demonstrations and EOS), the probe's is :func:`answer_nll` under the
        deployment.
    """
    from lmix_core.data.config import DataConfig
    from lmix_core.data.loading import load_examples, render_prompt
    from lmix_core.evaluation import deployment, evaluate
    from lmix_core.settings import EvalConfig, SamplingConfig
    from lmix_core.train.run import build

    cfg = recipe.backend.config
    refs = tuple(cfg.references) or (cfg.model,)
    recipe = attrs.evolve(
        recipe,
        backend=attrs.evolve(recipe.backend, config=attrs.evolve(cfg, model=str(model_dir), references=refs)),
    )
    probe_cfg = DataConfig(
        train=str(probe), eval=str(probe), chat_template="none", prompt_template=PROMPT_TEMPLATE
    )
    probe_examples = load_examples(probe_cfg, "eval")
    probe_eval = EvalConfig(samples=1, temperature=0.0)
    probe_sampling = SamplingConfig(max_new_tokens=sizes.eval.probe_max_new_tokens, stop=("\n",))
    scorer = ExactMatchScorer()
    parts = build(recipe, model_dir.parent)
    out: dict[str, dict[str, Any]] = {}
    try:
        for name in deployments:
            dist = deployment(parts.combiner, parts.eval) if name == "default" else name
            task = dict(task_done.get(name) or {})
            if not task:
                task = evaluate(
                    parts.backend,
                    parts.rewards,
                    parts.eval_examples,
                    parts.render_prompt,
                    parts.eval,
                    parts.sampling,
                    distribution=dist,
                    seed=seed,
                    step=recipe.train.steps,
                )
            probe_result = evaluate(
                parts.backend,
                scorer,
                probe_examples,
                partial(render_prompt, config=probe_cfg),
                probe_eval,
                probe_sampling,
                distribution=dist,
                seed=seed,
            )
            probe_summary = _summary(probe_result)
            probe_summary["nll"] = answer_nll(
                parts.backend, probe_examples, partial(render_prompt, config=probe_cfg), dist
            )
            out[name] = {"deploy": dist, "task": _summary(task), "probe": probe_summary}
    finally:
        parts.rewards.close()
        parts.backend.close()
    return out


__all__ = [
    "Layout",
    "evaluate_base",
    "evaluate_model",
    "execute",
    "pretrain",
    "pretrain_seed",
    "REPO",
    "STUDY_DIR",
    "recipes_dir",
    "write_data",
]
