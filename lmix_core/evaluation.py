"""Held-out evaluation: pass@1 and pass@k, format rate, mean NLL of the demonstrations, for either deployment.

``lmix eval MODEL_OR_RUN --data FILE`` runs it on a saved model or a run directory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmix_core.data.example import Example
from lmix_core.interfaces.backend import TrainerBackend
from lmix_core.settings import EvalConfig, SamplingConfig
from lmix_core.train.batching import demonstration_batch
from lmix_core.types import GenerationRequest

EVAL_ROWS = 64


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al., 2021): 1 − C(n−c, k)/C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def deployment(combiner: Any, config: EvalConfig) -> str:
    """``combined`` or ``policy``: the Config's choice, else the combiner's own default."""
    if config.deploy != "auto":
        return config.deploy
    return str(combiner.deploy)


def evaluate(
    backend: TrainerBackend,
    rewards: Any,
    examples: Sequence[Example],
    render,  # noqa: ANN001 - (tokenizer, Example) -> str
    config: EvalConfig,
    sampling: SamplingConfig,
    *,
    distribution: str,
    seed: int = 0,
    step: int = 0,
) -> dict[str, Any]:
    """Evaluate on ``examples``; every rank evaluates its own shard and the means are averaged.

    Returns:
        ``pass@1``, ``pass@k`` (k = ``config.samples``), ``format_rate`` (when a format verifier is configured),
        ``reward_mean``, ``nll`` (token-mean NLL of the demonstrations under the policy alone), ``n``.
    """
    tok = backend.tokenizer
    if config.max_examples:
        examples = examples[: config.max_examples]
    examples = list(examples)[backend.rank :: backend.world_size]
    k = config.samples
    temperature = config.temperature if config.temperature > 0 else 0.0
    max_new = config.max_new_tokens or sampling.max_new_tokens
    prompts = [tuple(tok(render(tok, ex), add_special_tokens=False)["input_ids"]) for ex in examples]
    rows = [(i, s) for i in range(len(examples)) for s in range(k)]
    correct = torch.zeros(len(examples), k)  # [E, k]
    reward_sum, fmt_sum, fmt_n = 0.0, 0.0, 0
    for start in range(0, len(rows), EVAL_ROWS):
        chunk = rows[start : start + EVAL_ROWS]
        gen = backend.generate(
            GenerationRequest(
                prompt_ids=tuple(prompts[i] for i, _ in chunk),
                max_new_tokens=max_new,
                temperature=temperature,
                top_p=1.0,
                stop=sampling.stop,
                seed=seed * 1_000_003 + start,
                distribution=distribution,  # type: ignore[arg-type]
                step=step,
            )
        )
        exs = [examples[i] for i, _ in chunk]
        scored = rewards.score(
            exs, [render(tok, e) for e in exs], gen.completions, gen.tokens.loss_mask.sum(-1).tolist()
        )
        for (i, s), ok in zip(chunk, scored.correct.tolist()):
            correct[i, s] = float(ok)
        reward_sum += float(scored.rewards.sum())
        if scored.format_rate is not None:
            fmt_sum += scored.format_rate * len(chunk)
            fmt_n += len(chunk)
    c = correct.sum(-1)  # [E]
    out: dict[str, Any] = {
        "n": len(examples),
        "pass@1": float(correct.mean()) if len(examples) else float("nan"),
        f"pass@{k}": sum(pass_at_k(k, int(ci), k) for ci in c.tolist()) / max(len(examples), 1),
        "reward_mean": reward_sum / max(len(rows), 1),
        "nll": _demo_nll(backend, examples, prompts),
    }
    if fmt_n:
        out["format_rate"] = fmt_sum / fmt_n
    means = backend.all_mean({k2: v for k2, v in out.items() if isinstance(v, float)})
    return out | means


def _demo_nll(
    backend: TrainerBackend, examples: Sequence[Example], prompts: Sequence[tuple[int, ...]]
) -> float:
    tok = backend.tokenizer
    pairs = [(p, ex.demonstration) for p, ex in zip(prompts, examples) if ex.demonstration]
    if not pairs:
        return float("nan")
    total, count = 0.0, 0
    for start in range(0, len(pairs), EVAL_ROWS):
        chunk = pairs[start : start + EVAL_ROWS]
        demos = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, d in chunk]
        batch = demonstration_batch([p for p, _ in chunk], demos, tok.pad_token_id or 0)
        stats = backend.score(batch, temperature=1.0)
        total += float(-(stats.logp * batch.loss_mask).sum())
        count += int(batch.loss_mask.sum())
    return total / max(count, 1)


def append_eval(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "eval.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def eval_command(args: Any) -> int:
    """``lmix eval MODEL_OR_RUN [--data FILE] [--rewards a,b] [--samples K] [--deploy D] [--out FILE]``.

    A run directory (it holds ``recipe.toml`` and ``model/``) is evaluated with its own recipe's rewards,
    references and prompt format; a bare model directory with the ``hf`` backend and ``--rewards`` (default
    ``math``). ``--data`` replaces the held-out file.
    """
    from lmix_core.errors import LmixError
    from lmix_core.recipe import load_recipe
    from lmix_core.train.run import evaluate_saved

    target = Path(args.target)
    overrides: list[str] = []
    if args.data:
        overrides.append(f"data.eval={json.dumps(str(Path(args.data).resolve()))}")
    if args.samples:
        overrides += [f"eval.samples={int(args.samples)}", "eval.temperature=1.0"]
    if (target / "recipe.toml").exists() and (target / "model").exists():
        recipe_path, model_dir = target / "recipe.toml", target / "model"
    elif (target / "config.json").exists():
        if not args.data:
            raise LmixError("lmix eval: a bare model directory needs --data FILE (the held-out questions)")
        names = [n for n in (args.rewards or "math").split(",") if n]
        body = ["schema = 1", "[backend]", 'type = "hf"', f"model = {json.dumps(str(target.resolve()))}"]
        for n in names:
            body += ["[[rewards]]", f"type = {json.dumps(n)}"]
        data = json.dumps(str(Path(args.data).resolve()))
        body += ["[train]", "steps = 1", "[data]", f"train = {data}", f"eval = {data}"]
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="lmix-eval-"))
        recipe_path = tmp / "eval.toml"
        recipe_path.write_text("\n".join(body) + "\n")
        model_dir = target
    else:
        raise LmixError(
            f"lmix eval: {str(target)!r} is neither a run directory (recipe.toml + model/) nor a Hugging Face model "
            f"directory (config.json)"
        )
    recipe = load_recipe(recipe_path, tuple(overrides))
    result = evaluate_saved(
        recipe, model_dir, distribution=None if args.deploy in (None, "auto") else args.deploy
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
