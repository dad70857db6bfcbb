"""The sizes of a comparison: model, testbed data, pretraining, the SFT starting model, the post-training budget,
evaluation and seeds. Three presets: ``full`` (the study), ``quick`` (``lmix compare --quick``) and ``tiny`` (a
pipeline check for tests, whose numbers mean nothing).

Measured per-step costs and the time estimates they give are in ``docs/study-design.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from attrs import validators as v

from lmix_core.errors import ConfigError
from lmix_core.testbed.data import TestbedSizes


@attrs.frozen(kw_only=True)
class Budget:
    """One post-training budget, the same for every method of a comparison.

    Attributes:
        steps: loop steps (each SFT, RL or mixed).
        prompts_per_step: questions per step (Q).
        group_size: rollouts per question (G) on steps that sample.
        max_new_tokens: response length limit of rollouts and evaluation.
        lr: learning rate (constant after the warm-up), shared by SFT and RL.
        warmup_steps: linear warm-up in optimiser steps.
    """

    steps: int = attrs.field(validator=v.ge(1))
    prompts_per_step: int = attrs.field(default=8, validator=v.ge(1))
    group_size: int = attrs.field(default=8, validator=v.ge(2))
    max_new_tokens: int = attrs.field(default=96, validator=v.ge(1))
    lr: float = attrs.field(default=1e-4, validator=v.gt(0.0))
    warmup_steps: int = attrs.field(default=5, validator=v.ge(0))


@attrs.frozen(kw_only=True)
class Sizes:
    """Everything that sets a comparison's cost.

    Attributes:
        preset: ``full``, ``quick`` or ``tiny``.
        model: :func:`lmix_core.synthetic.model.build_tiny_model` arguments of the from-scratch model.
        testbed: how much data to draw.
        pretrain_steps: pretraining optimiser steps (the final checkpoint).
        pretrain_docs: corpus documents per pretraining step.
        pretrain_lr: peak pretraining learning rate (cosine to 10%).
        early_step: the step of the early checkpoint (``ck_early``).
        sft_start: the budget of the SFT model that ``sft``-start regimes begin from.
        post: every compared run's budget.
        save_every: checkpoint interval of compared runs (an interrupted run resumes from its latest).
        eval_samples: completions per held-out problem (temperature ``eval_temperature``).
        eval_temperature: sampling temperature of the evaluation.
        gate_problems: hard RL prompts on which the ``hard`` gate measures the starting model's pass@8.
        probe_max_new_tokens: greedy response limit on probe items.
        train_seeds: training seeds.
        data_seeds: data (and pretraining) seeds.
    """

    preset: str = "full"
    model: Mapping[str, Any] = attrs.field(
        factory=lambda: {
            "arch": "qwen2",
            "hidden_size": 128,
            "num_layers": 4,
            "num_heads": 4,
            "num_kv_heads": 2,
        }
    )
    testbed: TestbedSizes = attrs.field(factory=TestbedSizes)
    pretrain_steps: int = attrs.field(default=2000, validator=v.ge(2))
    pretrain_docs: int = attrs.field(default=32, validator=v.ge(1))
    pretrain_lr: float = 3e-3
    early_step: int = attrs.field(default=400, validator=v.ge(1))
    sft_start: Budget = attrs.field(factory=lambda: Budget(steps=100, prompts_per_step=16, lr=3e-4))
    post: Budget = attrs.field(factory=lambda: Budget(steps=120))
    save_every: int = attrs.field(default=20, validator=v.ge(0))
    eval_samples: int = attrs.field(default=4, validator=v.ge(1))
    eval_temperature: float = 0.6
    gate_problems: int = attrs.field(default=200, validator=v.ge(1))
    probe_max_new_tokens: int = attrs.field(default=12, validator=v.ge(1))
    train_seeds: tuple[int, ...] = (0, 1, 2)
    data_seeds: tuple[int, ...] = (0, 1)

    def __attrs_post_init__(self) -> None:
        for name in ("train_seeds", "data_seeds"):
            seeds = getattr(self, name)
            if not isinstance(seeds, tuple) or not seeds or len(set(seeds)) != len(seeds):
                raise ConfigError(f"'{name}' must be a non-empty tuple of distinct seeds (got {seeds!r})")
        if not 1 <= self.early_step < self.pretrain_steps:
            raise ConfigError(
                f"'early_step' must be in [1, pretrain_steps) (got {self.early_step}, {self.pretrain_steps})"
            )

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, value_serializer=lambda _i, _a, x: list(x) if isinstance(x, tuple) else x)


FULL = Sizes()
"""The study: 2 data seeds x 3 training seeds, 120-step runs of 8 questions x 8 rollouts."""

QUICK = attrs.evolve(
    FULL,
    preset="quick",
    post=Budget(steps=80),
    eval_samples=2,
    gate_problems=100,
    train_seeds=(0, 1),
    data_seeds=(0,),
)
"""``lmix compare --quick``: the study's model, data, pretraining and SFT start, data seed 0 only, 2 training seeds,
80-step runs, 2 evaluation samples per problem. The default regime, ``format_worked``, passes its gate at these
sizes (about 21 minutes on 2 CPU cores with one recipe beside the baselines; ``docs/study-design.md``). A shorter
pretraining (800 steps) with 40-step runs failed the ``format`` gate: the model was too weak for GRPO to gain on
the SFT model in time."""

TINY = Sizes(
    preset="tiny",
    model={"arch": "qwen2", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1},
    testbed=TestbedSizes(
        corpus_documents=40,
        sft=16,
        sft_worked=16,
        rl=16,
        rl_hard=16,
        eval=6,
        eval_hard=6,
        probe=6,
        facts_per_document=2,
    ),
    pretrain_steps=2,
    pretrain_docs=4,
    early_step=1,
    sft_start=Budget(steps=1, prompts_per_step=2, warmup_steps=0),
    post=Budget(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=6, warmup_steps=0),
    save_every=1,
    eval_samples=2,
    gate_problems=3,
    probe_max_new_tokens=3,
    train_seeds=(0, 1),
    data_seeds=(0,),
)
"""A pipeline check (tests): every stage at micro sizes; its numbers mean nothing."""

PRESETS: Mapping[str, Sizes] = {"full": FULL, "quick": QUICK, "tiny": TINY}

__all__ = ["FULL", "PRESETS", "QUICK", "TINY", "Budget", "Sizes"]
