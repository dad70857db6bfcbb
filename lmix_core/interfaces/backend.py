"""TrainerBackend: owns the models, optimisers and sampling; knows nothing about algorithms."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs
import torch
from torch import Tensor

from lmix_core.errors import BackendError, UsageError
from lmix_core.interfaces.base import Component
from lmix_core.interfaces.combiner import PolicyCombiner
from lmix_core.interfaces.rollout_engine import EngineFactory, default_engine
from lmix_core.types import (
    Generation,
    GenerationRequest,
    LossOutput,
    MicroBatch,
    StepReport,
    TokenBatch,
    TokenStats,
)


class Objective(Protocol):
    """The loss a backend differentiates, one micro-batch at a time (built by the loop)."""

    @property
    def needs_entropy(self) -> bool:
        """Whether the backend computes the per-token entropy of the trained distribution (with gradient)."""
        ...

    @property
    def needs_ref_logp(self) -> bool:
        """Whether the backend computes the first reference's per-token log-probs."""
        ...

    @property
    def temperature(self) -> float:
        """The sampling temperature the log-probs are taken at."""
        ...

    def __call__(self, stats: TokenStats, batch: MicroBatch, /) -> LossOutput: ...


@attrs.frozen(kw_only=True)
class BackendContext:
    """What the loop tells a backend at construction.

    Attributes:
        combiner: the run's combiner; the backend calls ``combiner.mix_logits`` when sampling and scoring.
        num_references: frozen reference policies to load (combiner references, or 1 for a KL penalty).
        num_optimizer_states: 1, or 2 for a mixer that averages updates of two optimiser states.
        update_weights: weight of each state's update.
        seed: the run's seed.
        out_dir: the run directory (backends may keep scratch files there).
        rollout_engine: builds the backend's :class:`~lmix_core.interfaces.rollout_engine.RolloutEngine`, through
            which it samples (the recipe's ``[rollout_engine]`` table; default the built-in ``hf`` engine).
    """

    combiner: PolicyCombiner
    num_references: int = 0
    num_optimizer_states: int = 1
    update_weights: tuple[float, ...] = (1.0,)
    seed: int = 0
    out_dir: Path | None = None
    rollout_engine: EngineFactory = default_engine


@attrs.frozen(kw_only=True)
class BackendModels:
    """The models a backend Config names: what the core reads and replaces (``lmix eval``, evaluation of a saved
    model), through :meth:`TrainerBackend.models` and :meth:`TrainerBackend.with_models`.

    Attributes:
        policy: the policy's model directory (or hub id).
        references: the frozen references' directories, in order (may be fewer than the run needs; the backend
            fills in the policy's initial model).
    """

    policy: str
    references: tuple[str, ...] = ()


class TrainerBackend(Component):
    """Models, references, optimisers, sampling and checkpoints, behind one uniform API.

    Log-probs of the combined distribution are ``log_softmax(combiner.mix_logits(z_θ, z_refs) / T)`` at the
    sampled token, computed without materialising full ``[N, S, V]`` logits for more than one chunk of tokens
    (:func:`lmix_core.ops.mixed_logprobs.mixed_token_stats` does this from final hidden states and lm-head weights;
    a backend with a sharded vocabulary may compute the same statistics its own way). Position ids are
    ``cumsum(attention_mask) - 1``.

    Sampling goes through the rollout engine the backend builds with ``context.rollout_engine`` (never its own
    code); the backend calls the engine's ``load_policy_weights`` before the first :meth:`generate` after each
    update of the policy (an optimiser step, a loaded checkpoint).

    Contract (``lmix_core.testing.backend.check_backend``): the context is checked at construction; the declared
    models round-trip; ``all_sum``/``all_mean`` sum and average over ranks; generated rows have the documented
    layout and are seeded; ``score`` of a generated batch reproduces the sampler's log-probs; a ``train_step`` with
    a non-finite loss changes nothing and reports ``skipped``, an ordinary one lowers a fixed batch's loss;
    ``save_pretrained`` loads in transformers; a checkpoint saved and loaded samples the same tokens and reproduces
    the next step.
    """

    #: The Config fields that name the policy's model and the references (read by the default :meth:`models` and
    #: :meth:`with_models`, and by ``lmix eval`` to point a bare model directory at the backend).
    model_field: ClassVar[str] = "model"
    references_field: ClassVar[str] = "references"
    #: The name of the backend's own checkpoint format, which ``lmix convert --to <backend>`` writes from a
    #: Hugging Face directory (:meth:`convert`); None for a backend that trains Hugging Face checkpoints directly.
    native_format: ClassVar[str | None] = None
    #: How many optimiser states the backend can keep (``BackendContext.num_optimizer_states``, e.g. 2 for a mixer
    #: that averages the updates of two).
    max_optimizer_states: ClassVar[int] = 1

    def __init__(self, config: Any, context: BackendContext) -> None:
        """Keep ``config`` and ``context``, after the checks every backend needs.

        Raises:
            BackendError: the context asks for more optimiser states than :attr:`max_optimizer_states`, gives
                ``update_weights`` of another length, or the combiner mixes more references than it asks to load.
        """
        super().__init__(config)
        self.context = context
        name = type(self).__name__
        if not 1 <= context.num_optimizer_states <= self.max_optimizer_states:
            raise BackendError(
                f"{name} keeps 1 to {self.max_optimizer_states} optimiser state(s) (asked for "
                f"{context.num_optimizer_states})"
            )
        if len(context.update_weights) != context.num_optimizer_states:
            raise BackendError(
                f"context.update_weights has {len(context.update_weights)} weights for "
                f"{context.num_optimizer_states} optimiser state(s)"
            )
        if context.combiner.num_references > context.num_references:
            raise BackendError(
                f"the combiner mixes {context.combiner.num_references} reference(s) but the context asks the backend "
                f"to load only {context.num_references}"
            )

    # -- what the core reads from a Config ---------------------------------------------------------------------
    @classmethod
    def models(cls, config: Any) -> BackendModels:
        """The policy and references ``config`` names."""
        return BackendModels(
            policy=str(getattr(config, cls.model_field)),
            references=tuple(str(r) for r in getattr(config, cls.references_field)),
        )

    @classmethod
    def with_models(cls, config: Any, *, policy: str, references: Sequence[str]) -> Any:
        """``config`` with another policy model and references (evaluating a saved model under a run's recipe)."""
        return attrs.evolve(config, **{cls.model_field: policy, cls.references_field: tuple(references)})

    @classmethod
    def convert(cls, src: Path, dst: Path, /, *, to_native: bool, tp: int = 1, pp: int = 1) -> int:
        """``lmix convert``: write the model in ``src`` to ``dst`` in the backend's :attr:`native_format`
        (``to_native``) or back in Hugging Face format; returns the command's exit status.

        Args:
            tp, pp: tensor- and pipeline-parallel sizes of the native side, for backends that shard their format.

        Raises:
            UsageError: the backend has no format of its own (the default).
        """
        raise UsageError(
            f"{cls.__name__} trains Hugging Face checkpoints directly: there is nothing to convert "
            "(`lmix convert --to BACKEND` takes a backend that has a checkpoint format of its own)"
        )

    # -- process topology ------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """Data-parallel rank of this process (0 when not distributed)."""
        return 0

    @property
    def world_size(self) -> int:
        """Number of data-parallel ranks."""
        return 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes run files (metrics, checkpoints' metadata, plots)."""
        return True

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Mean of scalar metrics over data-parallel ranks (identity when not distributed)."""
        return dict(values)

    def all_sum(self, values: Tensor, /) -> Tensor:
        """Elementwise sum over data-parallel ranks of a CPU float64 tensor of the same shape on every rank.

        The loop sums each minibatch's token and row counts with it, so that loss weights normalise by the global
        batch (``train.dp_normalization = "global"``). Every rank must call it, in the same order. The default is
        for one process (a copy); a backend with ``world_size > 1`` must override it.

        Raises:
            BackendError: ``world_size > 1`` and the backend does not override it.
        """
        if self.world_size > 1:
            raise BackendError(
                f"{type(self).__name__} runs {self.world_size} data-parallel ranks but does not implement all_sum; "
                "the loop needs it to normalise the loss over ranks"
            )
        return values.detach().to("cpu", torch.float64).clone()

    def barrier(self) -> None:  # noqa: B027 - no-op when not distributed
        """Wait for every rank."""

    # -- models ----------------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The policy's ``transformers`` tokenizer (chat template included)."""

    @abstractmethod
    def generate(self, request: GenerationRequest, /) -> Generation:
        """Sample one response per row, from the combined distribution or the policy alone, through the engine."""

    @abstractmethod
    def score(
        self,
        batch: TokenBatch,
        /,
        *,
        temperature: float = 1.0,
        entropy: bool = False,
        ref_logp: bool = False,
        step: int = 0,
    ) -> TokenStats:
        """Per-token statistics under the current parameters, without gradient."""

    @abstractmethod
    def train_step(
        self,
        groups: Sequence[Sequence[MicroBatch]],
        objective: Objective,
        /,
        *,
        step: int,
        lr_step: int | None = None,
    ) -> StepReport:
        """One optimiser step.

        Args:
            groups: one list of micro-batches per optimiser state (``num_optimizer_states`` lists). Gradients of a
                group's micro-batches are summed; each group's gradient goes through its own optimiser state, all
                from the same parameter snapshot, and the updates are combined with ``update_weights``.
            objective: the loss for one micro-batch.
            step: the loop step, the combiner's clock: ``combiner.mix_logits(..., step=step)`` in the training
                forward, the same step that :meth:`generate` and :meth:`score` received for these rows (so the
                PPO ratio of the first update on fresh rollouts is exactly 1 under a scheduled combiner).
            lr_step: the optimiser step the learning-rate schedule reads (``None``: ``step``). The loop passes
                ``step × ppo_epochs × minibatches`` plus the updates already taken this step.

        Returns:
            The loss, per-group gradient norms, and ``skipped=True`` (parameters untouched) when the loss or a
            gradient was not finite.
        """

    def check_groups(self, groups: Sequence[Sequence[MicroBatch]], /) -> None:
        """The first check of every :meth:`train_step`: one micro-batch group per optimiser state.

        Raises:
            BackendError: ``len(groups)`` is not ``context.num_optimizer_states``.
        """
        n_states = self.context.num_optimizer_states
        if len(groups) != n_states:
            raise BackendError(
                f"train_step got {len(groups)} micro-batch group(s) for {n_states} optimiser state(s)"
            )

    # -- persistence -----------------------------------------------------------------------------------------
    @abstractmethod
    def save_checkpoint(self, path: Path, /) -> None:
        """Write model, optimiser states, schedulers and backend RNG under ``path`` (an empty directory)."""

    @abstractmethod
    def load_checkpoint(self, path: Path, /) -> None:
        """Restore what :meth:`save_checkpoint` wrote."""

    @abstractmethod
    def save_pretrained(self, path: Path, /) -> None:
        """Export the trained policy in Hugging Face format, loadable by plain ``transformers``."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release process groups and workers."""
