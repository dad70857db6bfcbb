"""RolloutEngine: where a backend samples rollouts, from the distribution the combiner defines.

At every decoding step the engine runs the policy and the ``K = combiner.num_references`` frozen references on the
same prefix and draws the next token from

    p(· | x_<t) = softmax( combiner.mix_logits(z_θ, z_ref_1 … z_ref_K, step) / T )

(``request.distribution = "policy"``: from ``softmax(z_θ / T)``). The backend owns training; the engine owns
sampling, and learns about each update through :meth:`RolloutEngine.load_policy_weights`, the weight-sync point
that an engine holding its own copy of the policy (vLLM, SGLang, another process or GPU) needs.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.base import Component
from lmix_core.interfaces.combiner import PolicyCombiner
from lmix_core.types import Generation, GenerationRequest

#: The engine a recipe gets when it has no ``[rollout_engine]`` table (shipped by lmix-hf).
DEFAULT_ENGINE = "hf"


@attrs.frozen(kw_only=True)
class SharedModels:
    """In-process models a backend lends its engine, so that an engine in the same process samples them directly.

    Attributes:
        policy: the transformers causal LM the backend trains (updated in place by every optimiser step).
        references: the frozen reference models, in the backend's order.
    """

    policy: Any
    references: tuple[Any, ...] = ()


@attrs.frozen(kw_only=True)
class EngineContext:
    """What a backend tells its rollout engine at construction.

    Attributes:
        combiner: the run's combiner; the engine calls ``combiner.mix_logits`` at every decoding step.
        tokenizer: the policy's ``transformers`` tokenizer (pad and EOS tokens, stop strings, completions' text).
        policy_dir: Hugging Face directory with the policy's ``config.json`` (its architecture). Its weights may be
            stale or absent: the backend sends the current ones through :meth:`RolloutEngine.load_policy_weights`
            before the first :meth:`RolloutEngine.generate`.
        reference_dirs: Hugging Face directories of the frozen references, in the backend's order; the combiner
            mixes the first ``combiner.num_references``, and ``Generation.ref_logp`` is the first one's.
        dtype: parameter dtype of the models the engine runs, ``float32`` or ``bfloat16``.
        device: where an in-process engine runs.
        shared: the backend's own in-process models, or None when it has none to lend (e.g. megatron, whose
            policy is sharded across processes).
    """

    combiner: PolicyCombiner
    tokenizer: Any
    policy_dir: Path
    reference_dirs: tuple[Path, ...] = ()
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    shared: SharedModels | None = None


class RolloutEngine(Component):
    """Samples rollouts from the combined distribution of the policy and ``K`` frozen references.

    One uniform call per duty:
        * :meth:`generate`: one response per prompt, from ``softmax(mix_logits(z_θ, z_refs, step) / T)`` or from
          the policy alone (``request.distribution``), with forced demonstration prefixes fed whole and the
          per-token log-probs of the sampled distribution (``Generation.logp``) and of the first reference alone
          (``Generation.ref_logp``, when one ran); ``request.seed`` makes it reproducible;
        * :meth:`load_policy_weights`: the policy changed (an optimiser step, a loaded checkpoint); sample the new
          weights from the next :meth:`generate` on.

    and one declaration the backend reads: :attr:`needs_weights`.

    A backend builds its engine with ``context.rollout_engine(EngineContext(...))``
    (:class:`~lmix_core.interfaces.backend.BackendContext`), calls :meth:`load_policy_weights` before the first
    :meth:`generate` and again before the first :meth:`generate` after each update, and never samples any other
    way.

    Contract (``lmix_core.testing.rollout_engine.check_rollout_engine``): samples follow the combined distribution,
    forced prefixes are honoured and never cut, the returned log-probs equal a scoring pass of the same tokens, the
    same seed gives the same tokens, and loaded weights take effect.
    """

    def __init__(self, config: Any, context: EngineContext) -> None:
        super().__init__(config)
        self.context = context

    @property
    def needs_weights(self) -> bool:
        """Whether :meth:`load_policy_weights` needs the tensors.

        False for an engine that samples ``context.shared.policy`` itself: the backend then passes None and the
        call only says that the model changed in place.
        """
        return True

    @abstractmethod
    def load_policy_weights(self, weights: Mapping[str, Tensor] | None, /) -> None:
        """Sample the updated policy from now on.

        Args:
            weights: the whole policy, Hugging Face parameter names to full (unsharded) tensors, when
                :attr:`needs_weights`; None otherwise.
        """

    @abstractmethod
    def generate(self, request: GenerationRequest, /) -> Generation:
        """Sample one response per prompt of ``request``.

        Returns:
            Rows in the :class:`~lmix_core.types.Generation` layout (right-padded ``[prompt][response][pad]``)
            with ``logp`` set, and ``ref_logp`` when the sampled distribution ran a reference.
        """

    def close(self) -> None:  # noqa: B027 - optional
        """Release the engine's models and workers."""


#: Builds a backend's rollout engine from its :class:`EngineContext`.
EngineFactory = Callable[[EngineContext], RolloutEngine]


def default_engine(context: EngineContext) -> RolloutEngine:
    """The :data:`DEFAULT_ENGINE` engine with its default Config (a recipe without a ``[rollout_engine]`` table)."""
    from lmix_core.registries import rollout_engines

    cls = rollout_engines.get(DEFAULT_ENGINE)
    return cls(cls.Config(), context)
