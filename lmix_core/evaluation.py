"""Held-out evaluation: pass@1 and pass@k, format rate, mean NLL of the demonstrations, for either deployment.

``lmix eval MODEL_OR_RUN --data FILE`` runs it on a saved model or a run directory.

Results are strict JSON (``eval.jsonl``, ``summary.json``, ``--out``): a value that is undefined is ``null``, never
``NaN``: ``nll`` when no held-out example has a demonstration, and ``pass@1``, ``pass@k`` and ``reward_mean`` when
there is no example.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from lmix_core.data.example import Example
from lmix_core.interfaces.backend import TrainerBackend
from lmix_core.interfaces.combiner import PolicyCombiner
from lmix_core.settings import EvalConfig, SamplingConfig
from lmix_core.train.batching import demonstration_batch
from lmix_core.types import Distribution, GenerationRequest

EVAL_ROWS = 64


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al., 2021): 1 − C(n−c, k)/C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def deployment(combiner: PolicyCombiner, config: EvalConfig) -> Distribution:
    """``combined`` or ``policy``: the Config's choice, else the combiner's own default."""
    if config.deploy != "auto":
        return config.deploy
    return combiner.deploy


def evaluate(
    backend: TrainerBackend,
    rewards: Any,
    examples: Sequence[Example],
    render: Callable[[Any, Example], str],
    config: EvalConfig,
    sampling: SamplingConfig,
    *,
    distribution: Distribution,
    seed: int = 0,
    step: int = 0,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate on ``examples``; every rank evaluates its own shard and the means are averaged.

    Args:
        on_sample: called with one record per completion, on rank 0 only, for every rank's completions (in
            the order of ``index`` and ``sample``; each rank sends its records through ``backend.all_sum``):
            ``index`` (the example's row), ``sample``,
            ``prompt`` (as rendered), ``completion``, ``answer`` (what the first correctness verifier that has an
            ``extract`` method reads from the completion, else ``null``), ``gold``, ``correct``, ``reward`` and
            ``verdicts`` (``name: reason`` of every verifier).

    Returns:
        ``pass@1``, ``pass@k`` (k = ``config.samples``), ``format_rate`` (when a format verifier is configured),
        ``reward_mean``, ``nll`` (token-mean NLL of the demonstrations under the policy alone), ``n``; an undefined
        value is ``None`` (see the module docstring).
    """
    tok = backend.tokenizer
    if config.max_examples:
        examples = examples[: config.max_examples]
    shards = [list(examples)[r :: backend.world_size] for r in range(backend.world_size)]
    examples = shards[backend.rank]
    k = config.samples
    temperature = config.temperature if config.temperature > 0 else 0.0
    max_new = config.max_new_tokens or sampling.max_new_tokens
    prompts = [tuple(tok(render(tok, ex), add_special_tokens=False)["input_ids"]) for ex in examples]
    rows = [(i, s) for i in range(len(examples)) for s in range(k)]
    correct = torch.zeros(len(examples), k)  # [E, k]
    records: list[dict[str, Any]] = []
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
                distribution=distribution,
                step=step,
            )
        )
        exs = [examples[i] for i, _ in chunk]
        texts = [render(tok, e) for e in exs]
        scored = rewards.score(exs, texts, gen.completions, gen.tokens.loss_mask.sum(-1).tolist())
        for (i, s), ok in zip(chunk, scored.correct.tolist()):
            correct[i, s] = float(ok)
        if on_sample is not None:
            extract = _extractor(rewards)
            for j, (i, s) in enumerate(chunk):
                records.append(
                    {
                        "index": examples[i].index,
                        "sample": s,
                        "prompt": texts[j],
                        "completion": gen.completions[j],
                        "answer": None if extract is None else extract(gen.completions[j]),
                        "gold": examples[i].answer,
                        "correct": bool(scored.correct[j]),
                        "reward": float(scored.rewards[j]),
                        "verdicts": list(scored.reasons[j]),
                    }
                )
        reward_sum += float(scored.rewards.sum())
        if scored.format_rate is not None:
            fmt_sum += scored.format_rate * len(chunk)
            fmt_n += len(chunk)
    # every rank samples (and scores) as often as the rank with most examples: a sharded backend's calls are
    # collectives (FSDP gathers the weights); the extra calls' results are discarded
    idle = _idle_prompt(tok, render, shards)
    for _ in range(_calls(max(len(sh) * k for sh in shards)) - _calls(len(rows))):
        backend.generate(
            GenerationRequest(
                prompt_ids=(idle,),
                max_new_tokens=1,
                temperature=0.0,
                distribution=distribution,
                step=step,
            )
        )
    if on_sample is not None:
        for record in _gather_records(backend, records):
            on_sample(record)
    c = correct.sum(-1)  # [E]
    nll_total, nll_count = _demo_nll(
        backend, examples, prompts, most=max(_demos(sh) for sh in shards), idle=idle
    )
    # every rank's sums, added over ranks once: the figures are those of the whole set, however it was sharded
    sums = torch.tensor(  # [9]
        [
            len(examples),
            float(correct.mean(-1).sum()),
            sum(pass_at_k(k, int(ci), k) for ci in c.tolist()),
            reward_sum,
            len(rows),
            fmt_sum,
            fmt_n,
            nll_total,
            nll_count,
        ],
        dtype=torch.float64,
    )
    n, pass1, passk, reward, n_rows, fmt, n_fmt, nll, n_nll = backend.all_sum(sums).tolist()

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    out: dict[str, Any] = {
        "n": int(n),
        "pass@1": ratio(pass1, n),
        f"pass@{k}": ratio(passk, n),
        "reward_mean": ratio(reward, n_rows),
        "nll": ratio(nll, n_nll),
    }
    if n_fmt:
        out["format_rate"] = fmt / n_fmt
    return finite_or_none(out)


def _gather_records(backend: TrainerBackend, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's ``records`` on rank 0, ordered by ``index`` and ``sample`` (``[]`` on the other ranks).

    Each rank writes its records' JSON bytes into its own row of a zero ``[world, longest]`` tensor, so that one
    ``all_sum`` (the one collective every backend has) leaves every rank's bytes on every rank.
    """
    if backend.world_size == 1:
        return sorted(records, key=lambda r: (r["index"], r["sample"]))
    mine = json.dumps([finite_or_none(r) for r in records], allow_nan=False).encode()
    sizes = torch.zeros(backend.world_size, dtype=torch.float64)  # [W]
    sizes[backend.rank] = len(mine)
    sizes = backend.all_sum(sizes)
    rows = torch.zeros(backend.world_size, int(sizes.max()), dtype=torch.float64)  # [W, longest]
    rows[backend.rank, : len(mine)] = torch.frombuffer(bytearray(mine), dtype=torch.uint8).to(torch.float64)
    rows = backend.all_sum(rows)
    if backend.rank != 0:
        return []
    every = [
        r
        for w in range(backend.world_size)
        for r in json.loads(bytes(rows[w, : int(sizes[w])].to(torch.uint8).tolist()).decode())
    ]
    return sorted(every, key=lambda r: (r["index"], r["sample"]))


def finite_or_none(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with every NaN or infinite float replaced by ``None`` (written as JSON ``null``)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def _extractor(rewards: Any) -> Callable[[str], str | None] | None:
    """The ``extract(completion)`` of the first correctness verifier that has one (the ``math`` verifier does)."""
    for _, verifier, _ in getattr(rewards, "named", ()):
        extract = getattr(verifier, "extract", None)
        if verifier.role == "correctness" and callable(extract):
            return extract
    return None


def _calls(rows: int) -> int:
    """Backend calls for ``rows`` rows (``EVAL_ROWS`` per call)."""
    return -(-rows // EVAL_ROWS)


def _demos(examples: Sequence[Example]) -> int:
    return sum(1 for ex in examples if ex.demonstration)


def _idle_prompt(tok: Any, render: Any, shards: Sequence[Sequence[Example]]) -> tuple[int, ...]:
    """A prompt for the calls a rank makes only to keep step with the others (the first example's)."""
    first = next((sh[0] for sh in shards if sh), None)
    return () if first is None else tuple(tok(render(tok, first), add_special_tokens=False)["input_ids"])


def _demo_nll(
    backend: TrainerBackend,
    examples: Sequence[Example],
    prompts: Sequence[tuple[int, ...]],
    *,
    most: int,
    idle: tuple[int, ...],
) -> tuple[float, int]:
    """Summed NLL and token count of this rank's demonstrations; ``most``: the most demonstrations any rank has
    (this rank scores idle rows until it has made as many calls)."""
    tok = backend.tokenizer
    pairs = [(p, ex.demonstration) for p, ex in zip(prompts, examples) if ex.demonstration]
    for _ in range(_calls(most) - _calls(len(pairs))):
        backend.score(
            demonstration_batch([idle], [[tok.eos_token_id]], tok.pad_token_id or 0), temperature=1.0
        )
    total, count = 0.0, 0
    for start in range(0, len(pairs), EVAL_ROWS):
        chunk = pairs[start : start + EVAL_ROWS]
        demos = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, d in chunk]
        batch = demonstration_batch([p for p, _ in chunk], demos, tok.pad_token_id or 0)
        stats = backend.score(batch, temperature=1.0)
        total += float(-(stats.logp * batch.loss_mask).sum())
        count += int(batch.loss_mask.sum())
    return total, count


def append_eval(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "eval.jsonl", "a") as f:
        f.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")


#: ``lmix eval`` options that set a ``[data]`` field, as ``option dest -> field``.
DATA_OPTIONS: Mapping[str, str] = {
    "adapter": "adapter",
    "format": "format",
    "prompt_column": "prompt_column",
    "answer_column": "answer_column",
    "demonstration_column": "demonstration_column",
    "metadata_columns": "metadata_columns",
    "prompt_template": "prompt_template",
    "system_prompt": "system_prompt",
    "chat_template": "chat_template",
    "limit": "eval_limit",
}


def _write_record(writer: IO[str], record: dict[str, Any]) -> None:
    """One JSON line of ``lmix eval --completions``."""
    writer.write(json.dumps(finite_or_none(record), ensure_ascii=False, allow_nan=False) + "\n")


def _discard(record: dict[str, Any]) -> None:
    """The ``--completions`` callback of ranks other than 0 (they receive no records)."""


def eval_command(args: Any) -> int:
    """``lmix eval MODEL_OR_RUN [--data FILE] [--recipe RECIPE] [data options] [--rewards a,b] [--samples K]
    [--deploy D] [--out FILE] [--completions FILE] [--backend NAME] [KEY=VALUE ...]``.

    A run directory (it holds ``recipe.toml`` and ``model/``) is evaluated with its own recipe's rewards,
    references, data settings and prompt format; a bare model directory with ``--backend`` (default ``hf``), ``--rewards``
    (default ``math``) and default data settings; ``--recipe`` replaces either recipe. ``--data`` replaces the
    held-out file, and the data options (``--adapter``, ``--prompt-column``, ``--prompt-template``, ...) replace
    the ``[data]`` fields of the same names (``--limit`` is ``eval_limit``). The data is read and checked before
    the model loads, and its errors name these options.
    """
    import attrs

    from lmix_core.data.loading import Names, load_examples, read_table
    from lmix_core.errors import LmixError
    from lmix_core.recipe import load_recipe, recipe_from_mapping
    from lmix_core.train.run import evaluate_saved

    target = Path(args.target)
    overrides: list[str] = list(getattr(args, "overrides", None) or ())
    if args.samples:
        overrides = [f"eval.samples={int(args.samples)}", "eval.temperature=1.0", *overrides]
    data_file = str(Path(args.data).resolve()) if args.data else None
    is_run = (target / "recipe.toml").exists() and (target / "model").exists()
    if is_run:
        model_dir = target / "model"
    elif (target / "config.json").exists():
        model_dir = target
    else:
        raise LmixError(
            f"{str(target)!r} is neither a run directory (recipe.toml + model/) nor a Hugging Face model "
            f"directory (config.json)"
        )
    if args.recipe:
        recipe = load_recipe(args.recipe, tuple(overrides))
    elif is_run:
        recipe = load_recipe(target / "recipe.toml", tuple(overrides))
    else:
        if data_file is None:
            raise LmixError("a bare model directory needs --data FILE (the held-out questions), or --recipe")
        bare = _bare_recipe(target, args.rewards or "math", data_file, getattr(args, "backend", None) or "hf")
        recipe = recipe_from_mapping(bare, tuple(overrides), source=f"lmix eval {target}")

    changes = {
        field: getattr(args, dest)
        for dest, field in DATA_OPTIONS.items()
        if getattr(args, dest, None) is not None
    }
    if isinstance(changes.get("metadata_columns"), str):
        changes["metadata_columns"] = tuple(c for c in changes["metadata_columns"].split(",") if c)
    if changes.get("demonstration_column") == "none":
        changes["demonstration_column"] = None
    if data_file is not None:
        changes["eval"] = data_file
    names = Names(train="--data", eval="--data", cli=True) if data_file is not None else Names()
    try:
        data = attrs.evolve(recipe.data, **changes)
    except (TypeError, ValueError) as exc:
        raise LmixError(f"data options: {exc}") from None
    if data.eval is None:
        data = attrs.evolve(data, eval=data.train)
    if (
        data_file is not None
        and data.adapter == "none"
        and data.demonstration_column is not None
        and args.demonstration_column is None
        and data.demonstration_column
        not in read_table(data_file, fmt=data.format, field="eval", names=names).column_names
    ):  # demonstrations are optional when evaluating (nll is then null)
        data = attrs.evolve(data, demonstration_column=None)
    examples = load_examples(data, "eval", names=names)
    recipe = attrs.evolve(recipe, data=data)

    # under torchrun, rank 0 prints and writes; the completions of every rank are gathered to it
    lead = int(os.environ.get("RANK", "0")) == 0
    writer = None
    if args.completions and lead:
        writer = open(args.completions, "w")  # noqa: SIM115 - closed below
    # every rank passes a callback, since gathering the records is collective; only rank 0 receives any
    sink = None if not args.completions else functools.partial(_write_record, writer) if writer else _discard

    try:
        result = evaluate_saved(
            recipe,
            model_dir,
            distribution=None if args.deploy in (None, "auto") else args.deploy,
            examples=examples,
            on_sample=sink,
        )
    finally:
        if writer is not None:
            writer.close()
    text = json.dumps(finite_or_none(result), indent=2, allow_nan=False)
    if lead:
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
    return 0


def _bare_recipe(model: Path, rewards: str, data_file: str, backend: str = "hf") -> dict[str, Any]:
    """The recipe (a mapping) for evaluating a bare model directory: the backend (its declared model field set to
    ``model``), the named rewards, the data."""
    from lmix_core.errors import LmixError
    from lmix_core.registries import REGISTRIES

    if backend not in REGISTRIES["backend"]:
        raise LmixError(
            f"--backend: no backend named {backend!r}\n  "
            + REGISTRIES["backend"].suggest(backend).replace("\n", "\n  ")
        )
    model_field = REGISTRIES["backend"].get(backend).model_field

    names = [n.strip() for n in rewards.split(",") if n.strip()]
    registry = REGISTRIES["reward"]
    for name in names:
        if name not in registry:
            raise LmixError(
                f"--rewards: no reward named {name!r}\n  " + registry.suggest(name).replace("\n", "\n  ")
            )
    return {
        "schema": 1,
        "backend": {"type": backend, model_field: str(model.resolve())},
        "rewards": [{"type": name} for name in names],
        "train": {"steps": 1},
        "data": {"train": data_file, "eval": data_file},
    }
