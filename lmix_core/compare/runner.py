"""Run a comparison on the testbed: data, pretraining, the starting model, the gate, every method, evaluation.

Everything is written under one output folder (:class:`Layout`) and every stage is skipped when its result is
there, so the same command resumes an interrupted comparison: a run with ``result.json`` is done; a run folder
with a checkpoint continues from it (``lmix run --resume-if-possible``: :func:`lmix_core.train.run.train` with
``start="resume_if_possible"``; runs save every ``Sizes.save_every`` steps); anything else starts again.

::

    OUT/sizes.json                                the sizes the folder was made with (another --preset is refused)
    OUT/data/d<D>/*.jsonl, overlaps.json          the testbed of data seed D and its overlap figures
    OUT/pretrain/d<D>/{init,run,ck_early,ck_final}
    OUT/start/d<D>-t<T>/                          the SFT starting model of an ``sft``-start regime (an lmix run)
    OUT/start-<file>/d<D>-t<T>/                   the same, trained on another SFT file (``Regime.sft_file``)
    OUT/<comparison>/start/d<D>-t<T>.json         the starting model's evaluation
    OUT/<comparison>/<method>/d<D>-t<T>/          one lmix run dir, plus result.json, recipe-mapping.json
    OUT/<comparison>/gate.json                    the regime's precondition, checked before the other methods

A run's ``result.json`` holds per-problem scores (``task``: mean correctness over the samples of each held-out
problem, ``format``: share in the SFT format; ``probe``: exact match per item) for each deployment, the training
accuracy curve, and its costs (steps, optimiser steps, rollouts, RL tokens, SFT steps, seconds).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs

from lmix_core.compare.methods import FORMAT_PATTERN, Comparison, Deployment, Method, merged
from lmix_core.compare.sizes import Budget, Sizes
from lmix_core.errors import LmixError
from lmix_core.testbed.regimes import REGIMES, Regime
from lmix_core.types import Distribution

Log = Callable[[str], None]

PROMPT_TEMPLATE = "{prompt}\n"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a half-written result must never look finished); the temporary name carries the
    process id, so two processes sharing an output folder never write the same temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@attrs.frozen
class Layout:
    """Where everything goes under the output folder ``out`` (see the module docstring)."""

    out: Path

    def data(self, d: int) -> Path:
        return self.out / "data" / f"d{d}"

    def pretrain(self, d: int) -> Path:
        return self.out / "pretrain" / f"d{d}"

    def start_run(self, d: int, t: int, sft_file: str = "sft") -> Path:
        return self.out / ("start" if sft_file == "sft" else f"start-{sft_file}") / f"d{d}-t{t}"

    def start_result(self, comparison: str, d: int, t: int) -> Path:
        return self.out / comparison / "start" / f"d{d}-t{t}.json"

    def run_dir(self, comparison: str, method: str, d: int, t: int) -> Path:
        return self.out / comparison / method / f"d{d}-t{t}"

    def gate(self, comparison: str) -> Path:
        return self.out / comparison / "gate.json"


def check_out(layout: Layout, sizes: Sizes) -> None:
    """Refuse a folder made with other sizes (results would mix); record the sizes in a new one. A folder made
    before a size was added (its record lacks the key, every other value equal) is accepted and its record
    extended."""
    path = layout.out / "sizes.json"
    mine = {k: v for k, v in sizes.to_dict().items() if k not in ("train_seeds", "data_seeds")}
    mine = json.loads(json.dumps(mine))
    if path.exists():
        theirs = read_json(path)
        if theirs != mine and _within(theirs, mine):  # sizes added since: the folder's runs did not use them
            write_json(path, mine)
        elif theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise LmixError(
                f"{str(layout.out)!r} holds runs made with other sizes (differing: {', '.join(diff)}); pass "
                "another --out, or delete the folder to start again"
            )
    else:
        write_json(path, mine)


def _within(old: Any, new: Any) -> bool:
    """Whether ``new`` holds every key of ``old`` with the same value, recursively (it may add keys)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and _within(v, new[k]) for k, v in old.items())
    return bool(old == new)


# -- data and pretraining --------------------------------------------------------------------------------------


def ensure_data(layout: Layout, sizes: Sizes, d: int, log: Log) -> Path:
    """The testbed of data seed ``d`` and its overlap figures (``overlaps.json``); skipped when present.

    A folder written before a file joined the testbed is written again: the draw is a pure function of the seed
    and the sizes, so the files it already holds come back byte for byte."""
    from lmix_core.testbed.data import FILES, overlaps, write_testbed

    folder = layout.data(d)
    marker = folder / "overlaps.json"
    if marker.exists() and all((folder / f"{name}.jsonl").exists() for name in FILES):
        return folder
    t0 = time.perf_counter()
    paths = write_testbed(folder, seed=d, sizes=sizes.testbed)
    figures = overlaps(paths)
    shared = {k: n for k, n in figures["pairs"].items() if n}
    if shared:
        raise LmixError(f"testbed files share problems (a bug in the generator): {shared}")
    write_json(marker, figures)
    log(f"data d{d}: written in {time.perf_counter() - t0:.1f}s, no problem shared between roles")
    return folder


def _pretrain_recipe(layout: Layout, sizes: Sizes, d: int, steps: int) -> Any:
    from lmix_core.recipe import recipe_from_mapping

    return recipe_from_mapping(
        {
            "schema": 1,
            "description": "testbed pretraining from scratch",
            "backend": {
                "type": "hf",
                "model": layout.pretrain(d) / "init",
                "lr": sizes.pretrain_lr,
                "weight_decay": 0.1,
                "grad_clip": 1.0,
                "lr_schedule": "cosine",
                "warmup_steps": max(0, min(30, sizes.pretrain_steps // 20)),
                "total_steps": sizes.pretrain_steps,
                "min_lr_ratio": 0.1,
                "micro_batch_size": sizes.pretrain_docs,
            },
            "mixer": {"type": "sft"},
            "rewards": [{"type": "math", "weight": 1.0}],
            "train": {
                "steps": steps,
                "prompts_per_step": sizes.pretrain_docs,
                "group_size": 1,
                "seed": d,
                "keep_checkpoints": 2,
                "save_every": max(1, sizes.pretrain_steps // 10),
            },
            "data": {"train": layout.data(d) / "corpus.jsonl", "text_column": "text"},
            "logging": {"wandb": "disabled", "progress": False},
        },
        source="testbed pretraining",
    )


def ensure_pretrain(layout: Layout, sizes: Sizes, d: int, log: Log) -> None:
    """Pretrain from scratch on the corpus, keeping ``ck_early`` and ``ck_final`` (each skipped when present).

    The run is one cosine schedule over ``pretrain_steps``, trained in two segments (``train.steps`` raised and
    resumed), so the early checkpoint is a point of the same run.
    """
    from lmix_core.synthetic.model import save_tiny_model_dir
    from lmix_core.train.run import train

    root = layout.pretrain(d)
    if not (root / "init" / "config.json").exists():
        save_tiny_model_dir(root / "init", seed=d, **dict(sizes.model))
    for name, step in (("ck_early", sizes.early_step), ("ck_final", sizes.pretrain_steps)):
        target = root / name
        if (target / "config.json").exists():
            continue
        log(f"pretrain d{d}: to step {step} ({name})")
        summary = train(
            _pretrain_recipe(layout, sizes, d, step), root / "run", start="resume_if_possible", quiet=True
        )
        tmp = target.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(summary["model"]), tmp)
        os.replace(tmp, target)


# -- recipes -----------------------------------------------------------------------------------------------------


def base_recipe(
    *,
    model: Path,
    train_file: Path,
    budget: Budget,
    seed: int,
    save_every: int,
    eval_samples: int,
    temperature: float,
) -> dict[str, Any]:
    """The shared recipe of every run: GRPO, ``ppo_clip`` (default clip, no entropy bonus), correctness reward,
    the SFT format measured by a weight-0 verifier, the budget, plain prompts."""
    return {
        "schema": 1,
        "backend": {
            "type": "hf",
            "model": model,
            "lr": budget.lr,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "lr_schedule": "constant",
            "warmup_steps": budget.warmup_steps,
            "micro_batch_size": 64,
        },
        "combiner": {"type": "policy"},
        "advantage": {"type": "grpo"},
        "loss": {"type": "ppo_clip"},
        "mixer": {"type": "rl"},
        "rewards": [
            {"type": "math", "weight": 1.0},
            {"type": "format", "weight": 0.0, "pattern": FORMAT_PATTERN},
        ],
        "train": {
            "steps": budget.steps,
            "prompts_per_step": budget.prompts_per_step,
            "group_size": budget.group_size,
            "seed": seed,
            "save_every": save_every,
            "keep_checkpoints": 1,
            "final_checkpoint": "skip",
        },
        "sampling": {"max_new_tokens": budget.max_new_tokens, "temperature": 1.0, "stop": ["\n\n"]},
        "eval": {"samples": eval_samples, "temperature": temperature},
        "data": {"train": train_file, "chat_template": "none", "prompt_template": PROMPT_TEMPLATE},
        "logging": {"wandb": "disabled", "progress": False},
    }


def ensure_sft_start(layout: Layout, sizes: Sizes, d: int, t: int, log: Log, sft_file: str = "sft") -> Path:
    """The SFT starting model of data seed ``d`` and training seed ``t``: SFT on ``<sft_file>.jsonl`` from
    ``ck_final``."""
    from lmix_core.recipe import recipe_from_mapping
    from lmix_core.train.run import train

    run = layout.start_run(d, t, sft_file)
    if (run / "summary.json").exists() and (run / "model" / "config.json").exists():
        return run / "model"
    log(f"SFT starting model d{d}-t{t}" + ("" if sft_file == "sft" else f" ({sft_file}.jsonl)"))
    mapping = base_recipe(
        model=layout.pretrain(d) / "ck_final",
        train_file=layout.data(d) / f"{sft_file}.jsonl",
        budget=sizes.sft_start,
        seed=t,
        save_every=sizes.save_every,
        eval_samples=sizes.eval_samples,
        temperature=sizes.eval_temperature,
    )
    mapping = merged(mapping, {"mixer": {"type": "sft"}, "description": "testbed SFT starting model"})
    train(
        recipe_from_mapping(mapping, source="testbed SFT start"), run, start="resume_if_possible", quiet=True
    )
    return run / "model"


def start_model(layout: Layout, regime: Regime, d: int, t: int) -> Path:
    """The model a regime's runs start from."""
    if regime.start == "sft":
        return layout.start_run(d, t, regime.sft_file) / "model"
    return layout.pretrain(d) / regime.start


def method_recipe(
    layout: Layout, sizes: Sizes, comparison: Comparison, method: Method, d: int, t: int
) -> dict[str, Any]:
    """A method's full recipe mapping in a comparison: the shared recipe, the comparison's shared tables, the
    method's tables and its step-dependent schedule."""
    regime = REGIMES[comparison.regime]
    mapping = base_recipe(
        model=start_model(layout, regime, d, t),
        train_file=layout.data(d) / f"{regime.train_file}.jsonl",
        budget=sizes.post,
        seed=t,
        save_every=sizes.save_every,
        eval_samples=sizes.eval_samples,
        temperature=sizes.eval_temperature,
    )
    mapping = merged(mapping, comparison.shared)
    mapping = merged(mapping, method.tables)
    mapping = merged(mapping, method.schedule(sizes.post.steps))
    if mapping["mixer"]["type"] == "sasr":
        mapping = merged(mapping, {"mixer": {"seed": t}})
    mapping["description"] = f"{comparison.name}: {method.label}"
    return mapping


# -- evaluation ----------------------------------------------------------------------------------------------------


class ExactMatchScorer:
    """Scores probe completions by exact match in this process (the part of the reward suite ``evaluate`` uses)."""

    def __init__(self) -> None:
        from lmix_core.rewards.exact_match import ExactMatch

        self.verifier = ExactMatch(ExactMatch.Config())

    def score(
        self, examples: Sequence[Any], prompts: Sequence[str], completions: Sequence[str], lengths: Any
    ) -> Any:
        import torch

        from lmix_core.train.components import Scored
        from lmix_core.types import RewardInput

        verdicts = [
            self.verifier.score_one(
                RewardInput(prompt=p, completion=c, reference=ex.answer, metadata={}, num_tokens=int(n))
            )
            for ex, p, c, n in zip(examples, prompts, completions, lengths, strict=True)
        ]
        scores = torch.tensor([v.score for v in verdicts], dtype=torch.float32)  # [N]
        return Scored(
            rewards=scores,
            correct=scores >= 1.0,
            has_correctness=True,
            format_rate=None,
            reasons=tuple((f"exact_match: {v.reason}",) for v in verdicts),
        )


def _per_problem(
    parts: Any,
    examples: Sequence[Any],
    render: Any,
    eval_cfg: Any,
    sampling: Any,
    rewards: Any,
    dist: Distribution,
    seed: int,
) -> dict[str, list[float]]:
    """Per-problem shares over ``eval_cfg.samples`` completions: correct, in the SFT format, both (``strict``), and
    whether any completion is correct (``any``: the problem's pass@k, k = the number of samples)."""
    from lmix_core.evaluation import evaluate

    records: list[dict[str, Any]] = []
    evaluate(
        parts.backend,
        rewards,
        examples,
        render,
        eval_cfg,
        sampling,
        distribution=dist,
        seed=seed,
        on_sample=records.append,
    )
    position = {ex.index: i for i, ex in enumerate(examples)}
    correct = [0.0] * len(examples)
    fmt = [0.0] * len(examples)
    strict = [0.0] * len(examples)
    count = [0] * len(examples)
    pattern = re.compile(FORMAT_PATTERN)
    for r in records:
        i = position[r["index"]]
        correct[i] += float(r["correct"])
        in_format = pattern.fullmatch(r["completion"]) is not None
        fmt[i] += float(in_format)
        strict[i] += float(in_format and r["correct"])
        count[i] += 1
    return {
        "correct": [c / max(n, 1) for c, n in zip(correct, count)],
        "format": [f / max(n, 1) for f, n in zip(fmt, count)],
        "strict": [f / max(n, 1) for f, n in zip(strict, count)],
        "any": [float(c > 0) for c in correct],
    }


def evaluate_model(
    mapping: Mapping[str, Any],
    model_dir: Path,
    *,
    eval_file: Path,
    probe_file: Path,
    sizes: Sizes,
    deployments: Sequence[Deployment],
    seed: int,
    work: Path,
) -> dict[str, Any]:
    """Per-problem held-out scores and probe exact match of a saved model under each deployment.

    The recipe's references stay the model it started from (``backend.model`` of ``mapping``), as in
    :func:`lmix_core.train.run.evaluate_saved`.
    """
    from lmix_core.data.config import DataConfig
    from lmix_core.data.loading import load_examples, render_prompt
    from lmix_core.evaluation import deployment
    from lmix_core.recipe import recipe_from_mapping
    from lmix_core.settings import EvalConfig, SamplingConfig
    from lmix_core.train.run import build

    start = mapping["backend"]["model"]
    refs = list(mapping["backend"].get("references") or [start])
    mapping = merged(
        mapping, {"backend": {"model": model_dir, "references": refs}, "data": {"eval": eval_file}}
    )
    recipe = recipe_from_mapping(mapping, source="testbed evaluation")
    probe_cfg = DataConfig(
        train=str(probe_file), eval=str(probe_file), chat_template="none", prompt_template=PROMPT_TEMPLATE
    )
    probe_examples = load_examples(probe_cfg, "eval")
    probe_eval = EvalConfig(samples=1, temperature=0.0)
    probe_sampling = SamplingConfig(max_new_tokens=sizes.probe_max_new_tokens, stop=("\n",))
    parts = build(recipe, work)
    out: dict[str, Any] = {}
    try:
        for name in deployments:
            dist = deployment(parts.combiner, parts.eval) if name == "default" else name
            task = _per_problem(
                parts,
                parts.eval_examples,
                parts.render_prompt,
                parts.eval,
                parts.sampling,
                parts.rewards,
                dist,
                seed,
            )
            probe = _per_problem(
                parts,
                probe_examples,
                partial(render_prompt, config=probe_cfg),
                probe_eval,
                probe_sampling,
                ExactMatchScorer(),
                dist,
                seed,
            )
            out[name] = {
                "deploy": dist,
                "task": task["correct"],
                "strict": task["strict"],
                "any": task["any"],
                "format": task["format"],
                "probe": probe["correct"],
            }
    finally:
        parts.rewards.close()
        parts.backend.close()
    return out


def pass_at_8(
    mapping: Mapping[str, Any], model_dir: Path, *, problems_file: Path, sizes: Sizes, seed: int, work: Path
) -> float:
    """The model's pass@8 on the first ``sizes.gate_problems`` problems of ``problems_file`` (the ``hard`` gate)."""
    from lmix_core.evaluation import evaluate
    from lmix_core.recipe import recipe_from_mapping
    from lmix_core.train.run import build

    mapping = merged(
        mapping,
        {
            "backend": {"model": model_dir},
            "data": {"eval": problems_file},
            "eval": {"samples": 8, "temperature": 1.0, "max_examples": sizes.gate_problems},
        },
    )
    parts = build(recipe_from_mapping(mapping, source="testbed gate"), work)
    try:
        result = evaluate(
            parts.backend,
            parts.rewards,
            parts.eval_examples,
            parts.render_prompt,
            parts.eval,
            parts.sampling,
            distribution="policy",
            seed=seed,
        )
    finally:
        parts.rewards.close()
        parts.backend.close()
    return float(result["pass@8"] or 0.0)


# -- runs ----------------------------------------------------------------------------------------------------------


def costs(run_dir: Path, budget: Budget, mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Steps, optimiser steps, rollouts, RL tokens, SFT steps and training seconds, from ``metrics.jsonl``."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    per_step = int(mapping["train"].get("ppo_epochs", 1)) * int(mapping["train"].get("minibatches", 1))
    rl_rows = [r for r in rows if "response_len" in r]
    return {
        "steps": len(rows),
        "optimizer_steps": len(rows) * per_step,
        "rollouts": len(rl_rows) * budget.prompts_per_step * budget.group_size,
        "rl_tokens": int(sum(r.get("tokens", 0) for r in rl_rows)),
        "sft_steps": sum(1 for r in rows if r.get("decision") != "rl"),
        "train_s": float(sum(r.get("step_time_s", 0.0) for r in rows)),
        "curve": [r.get("accuracy") if r.get("accuracy") == r.get("accuracy") else None for r in rows],
    }


def step_seconds(run_dir: Path) -> float:
    """Training time: the summed ``step_time_s`` of a run's ``metrics.jsonl`` (no evaluation, no start-up; 0 when
    it has none)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0.0
    return float(
        sum(json.loads(line).get("step_time_s", 0.0) for line in path.read_text().splitlines() if line)
    )


def run_method(
    layout: Layout, sizes: Sizes, comparison: Comparison, method: Method, d: int, t: int, log: Log
) -> dict[str, Any]:
    """Train (or resume) one method's run and evaluate it; returns its ``result.json`` (read back when done)."""
    from lmix_core.recipe import recipe_from_mapping
    from lmix_core.train.run import train

    run_dir = layout.run_dir(comparison.name, method.name, d, t)
    result_file = run_dir / "result.json"
    if result_file.exists():
        return read_json(result_file)
    regime = REGIMES[comparison.regime]
    mapping = method_recipe(layout, sizes, comparison, method, d, t)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "recipe-mapping.json", json.loads(json.dumps(mapping, default=str)))
    log(f"{comparison.name}/{method.name} d{d}-t{t}")
    before = step_seconds(run_dir)  # steps an interrupted invocation trained: their time counts too
    t0 = time.perf_counter()
    train(
        recipe_from_mapping(mapping, source=mapping["description"]),
        run_dir,
        start="resume_if_possible",
        quiet=True,
    )
    train_wall = before + time.perf_counter() - t0
    t1 = time.perf_counter()
    evals = evaluate_model(
        mapping,
        run_dir / "model",
        eval_file=layout.data(d) / f"{regime.eval_file}.jsonl",
        probe_file=layout.data(d) / "probe.jsonl",
        sizes=sizes,
        deployments=method.deployments,
        seed=t,
        work=run_dir / "eval-work",
    )
    shutil.rmtree(run_dir / "eval-work", ignore_errors=True)
    result = {
        "comparison": comparison.name,
        "method": method.name,
        "label": method.label,
        "d": d,
        "t": t,
        "evals": evals,
        "costs": costs(run_dir, sizes.post, mapping) | {"wall_s": train_wall + time.perf_counter() - t1},
    }
    write_json(result_file, result)
    return result


def evaluate_start(
    layout: Layout, sizes: Sizes, comparison: Comparison, d: int, t: int, log: Log
) -> dict[str, Any]:
    """The starting model's evaluation on the comparison's held-out problems and probe (the ``start`` row)."""
    path = layout.start_result(comparison.name, d, t)
    if path.exists():
        return read_json(path)
    from lmix_core.compare.methods import METHODS

    regime = REGIMES[comparison.regime]
    log(f"{comparison.name}/start d{d}-t{t}: evaluating the starting model")
    mapping = method_recipe(layout, sizes, comparison, METHODS["grpo"], d, t)
    model = start_model(layout, regime, d, t)
    work = path.parent / f"work-d{d}-t{t}"
    evals = evaluate_model(
        mapping,
        model,
        eval_file=layout.data(d) / f"{regime.eval_file}.jsonl",
        probe_file=layout.data(d) / "probe.jsonl",
        sizes=sizes,
        deployments=("default",),
        seed=t,
        work=work,
    )
    result: dict[str, Any] = {
        "method": "start",
        "label": f"start ({regime.start})",
        "d": d,
        "t": t,
        "evals": evals,
    }
    if regime.gate == "hard_start":
        result["pass@8_train"] = pass_at_8(
            mapping,
            model,
            problems_file=layout.data(d) / f"{regime.train_file}.jsonl",
            sizes=sizes,
            seed=t,
            work=work,
        )
    shutil.rmtree(work, ignore_errors=True)
    write_json(path, result)
    return result


def projection(
    layout: Layout, sizes: Sizes, plan: Sequence[tuple[Comparison, Sequence[str]]]
) -> dict[str, Any]:
    """Seconds the unfinished runs of ``plan`` (comparisons and their method names) should take, from the measured
    costs of the finished ones: a run's mean wall seconds per step (training and evaluation), per method where that
    method has finished runs, else over every finished run.

    Returns ``{"done": finished runs, "left": unfinished runs, "seconds": projected seconds}``; ``seconds`` is None
    when no run has finished yet.
    """
    per_step: dict[str, list[float]] = {}
    left: list[str] = []
    done = 0
    for comparison, names in plan:
        for name in names:
            for d, t in cells(sizes):
                path = layout.run_dir(comparison.name, name, d, t) / "result.json"
                if path.exists():
                    c = read_json(path)["costs"]
                    per_step.setdefault(name, []).append(c["wall_s"] / max(c["steps"], 1))
                    done += 1
                else:
                    left.append(name)
    every = [x for xs in per_step.values() for x in xs]
    if not every:
        return {"done": 0, "left": len(left), "seconds": None}
    mean = sum(every) / len(every)
    seconds = sum(
        sizes.post.steps * (sum(per_step[n]) / len(per_step[n]) if n in per_step else mean) for n in left
    )
    return {"done": done, "left": len(left), "seconds": seconds}


def cells(sizes: Sizes) -> list[tuple[int, int]]:
    """The (data seed, training seed) cells, data seed outermost."""
    return [(d, t) for d in sizes.data_seeds for t in sizes.train_seeds]


def prepare(layout: Layout, sizes: Sizes, comparisons: Sequence[Comparison], log: Log) -> None:
    """Data, pretraining and (when a regime starts from SFT) the SFT starting models, for every cell."""
    for d in sizes.data_seeds:
        ensure_data(layout, sizes, d, log)
        ensure_pretrain(layout, sizes, d, log)
    sft_files = dict.fromkeys(
        REGIMES[c.regime].sft_file for c in comparisons if REGIMES[c.regime].start == "sft"
    )
    for sft_file in sft_files:
        for d, t in cells(sizes):
            ensure_sft_start(layout, sizes, d, t, log, sft_file)


def run_comparison(
    layout: Layout,
    sizes: Sizes,
    comparison: Comparison,
    methods: Mapping[str, Method],
    log: Log,
    *,
    gate_only: bool = False,
    enforce_gate: bool = True,
    gate_sizes: Sizes | None = None,
) -> dict[str, Any]:
    """Run a comparison: the starting model's evaluation and the gate's methods first, the gate, then the rest.

    Returns ``{"gate": gate verdict, "ran": [method names]}``; when the gate fails the other methods are not run
    (``enforce_gate=False``, for pipeline checks at micro sizes only, runs them anyway; the verdict still records
    the failure). ``gate_sizes`` (default ``sizes``) chooses the cells the gate is checked on: a shard of the
    study passes every data seed's sizes to decide on all cells once the other shards' gate runs have finished.
    """
    from lmix_core.compare.gate import check_gate

    for d, t in cells(sizes):
        evaluate_start(layout, sizes, comparison, d, t, log)
    first = list(comparison.to_run(gate_passed=False))
    for name in first:
        for d, t in cells(sizes):
            run_method(layout, sizes, comparison, methods[name], d, t, log)
    on = gate_sizes or sizes
    gate = check_gate(layout, on, comparison) | {"cells": [list(c) for c in cells(on)]}
    write_json(layout.gate(comparison.name), gate)
    log(f"{comparison.name}: gate {'passed' if gate['passed'] else 'FAILED'}: {gate['reason']}")
    if (not gate["passed"] and enforce_gate) or gate_only:
        return {"gate": gate, "ran": first}
    rest = [m for m in methods if m not in first]
    for name in rest:
        for d, t in cells(sizes):
            run_method(layout, sizes, comparison, methods[name], d, t, log)
    return {"gate": gate, "ran": first + rest}


__all__ = [
    "FORMAT_PATTERN",
    "Layout",
    "base_recipe",
    "cells",
    "check_out",
    "ensure_data",
    "ensure_pretrain",
    "ensure_sft_start",
    "evaluate_model",
    "evaluate_start",
    "method_recipe",
    "prepare",
    "projection",
    "run_comparison",
    "run_method",
    "start_model",
    "step_seconds",
]
