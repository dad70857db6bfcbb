"""Run-level settings: the recipe tables that are not registered components.

``[train]``, ``[sampling]``, ``[eval]`` and ``[logging]`` structure into these frozen Configs; ``[data]`` into
:class:`lmix_core.data.config.DataConfig`. Component tables (``[backend]``, ``[combiner]``, ``[advantage]``,
``[loss]``, ``[mixer]``, ``[[rewards]]``) name a registered component with ``type``.
"""

from __future__ import annotations

from typing import Literal

import attrs
from attrs import validators as v


@attrs.frozen(kw_only=True)
class TrainConfig:
    """``[train]``: the step budget and the loop's own knobs.

    Attributes:
        steps: loop steps (each takes ``ppo_epochs × minibatches`` optimiser steps); component schedules count
            loop steps, the backend's learning-rate schedule counts optimiser steps.
        prompts_per_step: questions per step (``Q``); also the number of demonstrations an SFT step trains on.
        group_size: rollouts per question (``G``).
        ppo_epochs: passes over each step's rollouts (old log-probs are computed once per step).
        minibatches: optimiser steps per pass; each takes an equal share of the step's questions.
        seed: seeds data order, sampling and the combiner's rollout plans (components with their own
            randomness, e.g. ``sasr``, take a ``seed`` in their Config).
        eval_every: evaluate on held-out data every this many steps (0: only at the end).
        save_every: write a resumable checkpoint every this many steps (0: only at the end).
        keep_checkpoints: how many periodic checkpoints to keep (the latest always kept).
        max_nonfinite: consecutive skipped (non-finite) steps after which the run aborts with a checkpoint.
        final_checkpoint: ``save`` writes a resumable checkpoint (model, optimiser states, loop state) when
            training ends, which a raised ``train.steps`` continues from; ``skip`` writes none (the exported
            ``model/`` is unaffected), saving the disk and time of one optimiser state (Adam: twice the model's
            parameters in fp32) at the cost of not being able to extend the run.
        dp_normalization: under data parallelism, ``global`` normalises the loss (token-mean and the row
            counts of the ``seq-mean-*`` modes, the SFT token mean) by the counts of the whole minibatch over all
            ranks, so W ranks compute the gradient of the global batch in one process (verl's convention);
            ``rank`` normalises by each rank's own counts and the ranks' gradients are averaged (plain DDP).
        kl_in_reward_coef: β of a KL penalty in the reward (verl's ``use_kl_in_reward`` with its fixed
            controller): each rollout's reward becomes ``r − β·Σ_t KL_t``, summed over its response tokens, before
            the advantage estimator (``lmix_core.ops.kl_reward``); 0 turns it off. It loads the initial policy as
            the reference (the first one), and adds to any KL term of the loss.
        kl_in_reward_estimator: the per-token ``KL_t`` of the reward penalty: ``k1`` (verl's default ``kl``),
            ``k2`` (``mse``) or ``k3`` (``low_var_kl``).
    """

    steps: int = attrs.field(validator=v.ge(1))
    prompts_per_step: int = attrs.field(default=8, validator=v.ge(1))
    group_size: int = attrs.field(default=8, validator=v.ge(1))
    ppo_epochs: int = attrs.field(default=1, validator=v.ge(1))
    minibatches: int = attrs.field(default=1, validator=v.ge(1))
    seed: int = 0
    eval_every: int = attrs.field(default=0, validator=v.ge(0))
    save_every: int = attrs.field(default=0, validator=v.ge(0))
    keep_checkpoints: int = attrs.field(default=2, validator=v.ge(1))
    max_nonfinite: int = attrs.field(default=3, validator=v.ge(1))
    final_checkpoint: Literal["save", "skip"] = attrs.field(default="save", validator=v.in_(("save", "skip")))
    dp_normalization: Literal["global", "rank"] = attrs.field(
        default="global", validator=v.in_(("global", "rank"))
    )
    kl_in_reward_coef: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.lt(float("inf"))])
    kl_in_reward_estimator: Literal["k1", "k2", "k3"] = attrs.field(
        default="k1", validator=v.in_(("k1", "k2", "k3"))
    )

    def __attrs_post_init__(self) -> None:
        if self.prompts_per_step % self.minibatches:
            raise ValueError(
                f"'minibatches' must divide 'prompts_per_step' (got {self.minibatches} and {self.prompts_per_step})"
            )


@attrs.frozen(kw_only=True)
class SamplingConfig:
    """``[sampling]``: how training rollouts are drawn.

    Attributes:
        temperature: divides the combined logits when sampling and when scoring log-probs (TRL's convention).
        top_p: nucleus threshold; 1.0 keeps the sampled and the trained distributions identical.
        max_new_tokens: response length limit (forced prefix tokens included).
        stop: strings that end a response.
    """

    temperature: float = attrs.field(default=1.0, validator=v.gt(0.0))
    top_p: float = attrs.field(default=1.0, validator=[v.gt(0.0), v.le(1.0)])
    max_new_tokens: int = attrs.field(default=64, validator=v.ge(1))
    stop: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class EvalConfig:
    """``[eval]``: held-out evaluation during and after training.

    Attributes:
        samples: completions per question; pass@k is reported for k = 1 and k = ``samples``.
        temperature: 0 decodes greedily (then ``samples`` must be 1).
        max_examples: cap on held-out questions (0: all).
        deploy: ``combined`` evaluates the combiner's distribution, ``policy`` the trained policy alone, ``auto``
            the combiner's default.
        max_new_tokens: response length limit at evaluation (0: the sampling one).
    """

    samples: int = attrs.field(default=1, validator=v.ge(1))
    temperature: float = attrs.field(default=0.0, validator=v.ge(0.0))
    max_examples: int = attrs.field(default=0, validator=v.ge(0))
    deploy: Literal["auto", "combined", "policy"] = "auto"
    max_new_tokens: int = attrs.field(default=0, validator=v.ge(0))

    def __attrs_post_init__(self) -> None:
        if self.temperature == 0.0 and self.samples > 1:
            raise ValueError(f"'samples' must be 1 when 'temperature' is 0 (got {self.samples})")


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """``[logging]``: where metrics go besides ``metrics.jsonl``.

    Attributes:
        wandb: ``offline`` (default; sync later with ``wandb sync``), ``online``, or ``disabled``. The environment
            variable ``WANDB_MODE`` overrides it.
        project: wandb project name.
        progress: show a progress bar with ETA and the latest reward.
    """

    wandb: Literal["offline", "online", "disabled"] = "offline"
    project: str = "lmix"
    progress: bool = True
