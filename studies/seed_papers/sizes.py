"""The study's sizes: model, data, pretraining, post-training and evaluation budgets, read from ``sizes.toml``.

Every number that sets the study's cost lives in one file, :data:`SIZES_FILE`, as presets:

* ``[full]`` is complete: the 3-seed study that ``python -m studies.seed_papers`` runs;
* ``[quick]`` (``--quick``) and ``[smoke]`` (``--smoke``, the tests) list only what they change; they are merged
  onto ``[full]`` table by table.

A preset is structured into the frozen :class:`Sizes` with lmix's recipe structuring (:mod:`lmix_core.config`), so a
typo or an out-of-range value is reported with its path (``quick.post.stpes: ... did you mean 'steps'?``), every
problem at once.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import validators as v

from lmix_core.config import structure, unstructure
from lmix_core.errors import ConfigError
from lmix_core.recipe import merged

SIZES_FILE = Path(__file__).with_name("sizes.toml")
Preset = Literal["full", "quick", "smoke"]
PRESETS: tuple[Preset, ...] = ("full", "quick", "smoke")


def _levels(instance: Any, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    from lmix_core.demo.task import LEVELS

    if not value or any(lv not in LEVELS for lv in value) or len(set(value)) != len(value):
        raise ValueError(
            f"'{attribute.name}' must be distinct levels among {sorted(LEVELS)} (got {list(value)!r})"
        )


@attrs.frozen(kw_only=True)
class ModelSizes:
    """The from-scratch model (``lmix_core.synthetic.model.build_tiny_model``'s arguments).

    Attributes:
        arch: ``qwen2``, ``llama`` or ``qwen3``.
        hidden_size: width.
        num_layers: decoder layers.
        num_heads: attention heads.
        num_kv_heads: key/value heads.
        max_position_embeddings: longest sequence (prompt + response, or one corpus document).
    """

    arch: Literal["qwen2", "llama", "qwen3"] = attrs.field(
        default="qwen2", validator=v.in_(("qwen2", "llama", "qwen3"))
    )
    hidden_size: int = attrs.field(default=128, validator=v.ge(8))
    num_layers: int = attrs.field(default=4, validator=v.ge(1))
    num_heads: int = attrs.field(default=4, validator=v.ge(1))
    num_kv_heads: int = attrs.field(default=2, validator=v.ge(1))
    max_position_embeddings: int = attrs.field(default=512, validator=v.ge(64))


@attrs.frozen(kw_only=True)
class DataSizes:
    """The task family, the probe and the corpus (``lmix_core.demo.task``).

    Attributes:
        levels: arithmetic levels of the corpus, the post-training problems and the held-out problems.
        style: worked-solution style (``short``, ``columns`` or ``place_value``).
        train_size: post-training problems (train split; each has a worked demonstration).
        eval_size: held-out problems (test split) for pass@1 / pass@k and format compliance.
        probe_size: held-out general-capability probe items (test split; never trained on after pretraining).
        corpus_documents: pretraining documents (train split only).
        items_per_document: problems, fact lines or probe items per corpus document.
        corpus_solutions: weight of worked-solution documents in the corpus (``generate_corpus``'s ``mix``).
        corpus_facts: weight of arithmetic-fact documents.
        corpus_probe: weight of probe documents (the corpus is the probe's only source).
        seed: the data seed (the same data for every training seed).
    """

    levels: tuple[int, ...] = attrs.field(default=(1, 2, 3, 4, 5), converter=tuple, validator=_levels)
    style: Literal["short", "columns", "place_value"] = attrs.field(
        default="short", validator=v.in_(("short", "columns", "place_value"))
    )
    train_size: int = attrs.field(default=2000, validator=v.ge(1))
    eval_size: int = attrs.field(default=50, validator=v.ge(1))
    probe_size: int = attrs.field(default=60, validator=v.ge(1))
    corpus_documents: int = attrs.field(default=4000, validator=v.ge(1))
    items_per_document: int = attrs.field(default=2, validator=v.ge(1))
    corpus_solutions: float = attrs.field(default=0.5, validator=v.ge(0.0))
    corpus_facts: float = attrs.field(default=0.2, validator=v.ge(0.0))
    corpus_probe: float = attrs.field(default=0.3, validator=v.ge(0.0))
    seed: int = attrs.field(default=0, validator=v.ge(0))

    def __attrs_post_init__(self) -> None:
        if self.corpus_solutions + self.corpus_facts + self.corpus_probe <= 0:
            raise ValueError("the corpus weights must have a positive sum (got all 0)")

    @property
    def corpus_mix(self) -> dict[str, float]:
        return {"solutions": self.corpus_solutions, "facts": self.corpus_facts, "probe": self.corpus_probe}


@attrs.frozen(kw_only=True)
class PretrainSizes:
    """Pretraining from scratch on the corpus (``studies/seed_papers/recipes/pretrain.toml``).

    Attributes:
        steps: optimiser steps; the last checkpoint is the final model.
        docs_per_step: corpus documents per step.
        lr: peak learning rate (cosine decay to 10 % after ``warmup_steps``).
        warmup_steps: linear warm-up steps.
        checkpoints: the 3 steps whose models are kept as ``ck1``, ``ck2``, ``ck3`` (increasing; the last must be
            ``steps``).
        per_seed: pretrain one model per training seed (True) or share the ``seed`` one (False).
        seed: the pretraining seed when ``per_seed`` is False.
    """

    steps: int = attrs.field(default=400, validator=v.ge(1))
    docs_per_step: int = attrs.field(default=16, validator=v.ge(1))
    lr: float = attrs.field(default=3e-3, validator=v.gt(0.0))
    warmup_steps: int = attrs.field(default=20, validator=v.ge(0))
    checkpoints: tuple[int, ...] = attrs.field(default=(100, 200, 400), converter=tuple)
    per_seed: bool = False
    seed: int = attrs.field(default=0, validator=v.ge(0))

    def __attrs_post_init__(self) -> None:
        ck = self.checkpoints
        if len(ck) != 3 or list(ck) != sorted(set(ck)) or ck[0] < 1 or ck[-1] != self.steps:
            raise ValueError(
                f"'checkpoints' must be 3 increasing steps >= 1 ending at 'steps' ({self.steps}), the ck1, ck2 and "
                f"ck3 of comparison 2 (got {list(ck)!r})"
            )
        if self.warmup_steps >= self.steps:
            raise ValueError(f"'warmup_steps' must be < 'steps' ({self.steps}) (got {self.warmup_steps})")


@attrs.frozen(kw_only=True)
class PostSizes:
    """One post-training budget, equal for every method that uses it.

    Attributes:
        steps: optimiser steps (SFT, RL and mixed steps alike).
        prompts_per_step: questions per step (Q): an SFT step trains on their Q demonstrations.
        group_size: rollouts per question (G) on steps that sample.
        max_new_tokens: response length limit of rollouts and of the held-out evaluation.
        lr: learning rate, the same for SFT and RL (constant after the warm-up).
        warmup_steps: linear learning-rate warm-up steps (the first Adam steps from a fresh state are the largest).
    """

    steps: int = attrs.field(default=20, validator=v.ge(1))
    prompts_per_step: int = attrs.field(default=8, validator=v.ge(1))
    group_size: int = attrs.field(default=8, validator=v.ge(2))
    max_new_tokens: int = attrs.field(default=64, validator=v.ge(1))
    lr: float = attrs.field(default=1e-4, validator=v.gt(0.0))
    warmup_steps: int = attrs.field(default=0, validator=v.ge(0))


@attrs.frozen(kw_only=True)
class EvalSizes:
    """Held-out evaluation of every final model.

    Attributes:
        samples: completions per held-out problem (pass@1 is their mean accuracy, pass@k uses k = ``samples``).
        temperature: sampling temperature of those completions.
        probe_max_new_tokens: response length limit on probe items (greedy, exact match).
    """

    samples: int = attrs.field(default=8, validator=v.ge(1))
    temperature: float = attrs.field(default=0.6, validator=v.gt(0.0))
    probe_max_new_tokens: int = attrs.field(default=16, validator=v.ge(1))


@attrs.frozen(kw_only=True)
class Sizes:
    """Everything that sets the study's cost (one preset of ``sizes.toml``).

    Attributes:
        preset: ``full``, ``quick`` or ``smoke``.
        seeds: training seeds (``--seeds`` replaces them).
        model: the from-scratch model.
        data: task, probe and corpus.
        pretrain: pretraining and its kept checkpoints.
        post: the budget of every post-training run that starts from a pretrained checkpoint (comparisons 2-4,
            and the SFT model of comparison 1).
        from_sft: the budget of comparison 1's RL runs, which start from the SFT model.
        eval: held-out evaluation.
    """

    preset: Preset = attrs.field(default="full", validator=v.in_(PRESETS))
    seeds: tuple[int, ...] = attrs.field(default=(0, 1, 2), converter=tuple)
    model: ModelSizes = attrs.field(factory=ModelSizes)
    data: DataSizes = attrs.field(factory=DataSizes)
    pretrain: PretrainSizes = attrs.field(factory=PretrainSizes)
    post: PostSizes = attrs.field(factory=PostSizes)
    from_sft: PostSizes = attrs.field(factory=PostSizes)
    eval: EvalSizes = attrs.field(factory=EvalSizes)

    def __attrs_post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"'seeds' must be distinct integers >= 0 (got {list(self.seeds)!r})")

    def to_dict(self) -> dict[str, Any]:
        """TOML/JSON-ready form (every field, defaults included)."""
        return unstructure(self)


def load_sizes(preset: Preset = "full", path: Path | str = SIZES_FILE) -> Sizes:
    """The ``preset`` of ``path``: ``[full]``, with ``[quick]`` or ``[smoke]`` merged onto it.

    Raises:
        ConfigError: an unknown preset, or every problem of the merged table with its path.
    """
    path = Path(path)
    with path.open("rb") as f:
        tables = tomllib.load(f)
    unknown = sorted(set(tables) - set(PRESETS))
    if preset not in PRESETS or unknown:
        raise ConfigError(
            f"{str(path)!r}: presets must be among {list(PRESETS)} (asked {preset!r}, file has {sorted(tables)})"
        )
    table = (
        merged(tables.get("full", {}), tables.get(preset, {})) if preset != "full" else tables.get("full", {})
    )
    sizes, problems = structure(
        Sizes, {**table, "preset": preset}, path=preset, owner=f"sizes preset {preset!r}"
    )
    if problems:
        raise ConfigError(
            f"{str(path)!r} has {len(problems)} problem(s):\n"
            + "\n".join(p.render().rstrip() for p in problems)
        )
    return sizes


__all__ = ["PRESETS", "SIZES_FILE", "EvalSizes", "PostSizes", "PretrainSizes", "Sizes", "load_sizes"]
