"""Rollout engines: where the megatron backend samples from.

Megatron-core's own inference engines are CUDA-only, so sampling runs in a separate engine fed with the trained
weights after each update. One engine lives on each data-parallel replica's model-parallel *leader* (TP rank 0
of the first pipeline stage); it samples that replica's prompts and the backend broadcasts the result to the
replica's other ranks.

* :class:`HFRolloutEngine` (``rollout_engine = "hf"``, the default): an in-process Hugging Face copy of the policy
  (plus the frozen references, loaded from their HF directories) driven by :class:`lmix_hf.sampler.Sampler`,
  which runs the policy and the references in lockstep and samples the combiner's mixture. Weights arrive as a
  full HF state dict exported from the megatron shards (TP all-gather, PP gather to the leader).
* A vLLM engine would implement the same two methods: ``load_policy_weights`` (vLLM's ``load_weights`` from the
  same HF-named tensors) and ``generate`` (a model wrapper that runs the policy and references and applies
  ``combiner.mix_logits`` per decoding step). It is not shipped: no GPU was available to build and test it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lmix_core.errors import BackendError
from lmix_core.interfaces.combiner import PolicyCombiner
from lmix_core.types import Generation, GenerationRequest

__all__ = ["ENGINES", "EngineName", "HFRolloutEngine", "RolloutEngine"]

EngineName = Literal["hf"]


class RolloutEngine(ABC):
    """Samples rollouts from the current policy (and references), on one process."""

    @abstractmethod
    def load_policy_weights(self, state_dict: Mapping[str, Tensor]) -> None:
        """Replace the policy's weights with an HF-named state dict (the full model)."""

    @abstractmethod
    def generate(self, request: GenerationRequest, *, combiner: PolicyCombiner) -> Generation:
        """Sample one response per prompt from ``request.distribution`` (``combined`` or ``policy``)."""


class HFRolloutEngine(RolloutEngine):
    """A transformers copy of the policy plus the frozen references, sampled with :class:`lmix_hf.sampler.Sampler`.

    Args:
        hf_config: the policy's HF config.
        tokenizer: the policy's tokenizer.
        references: HF directories of the frozen references (in the backend's order).
        dtype: parameter dtype of the copies.
        device: where they run.
    """

    def __init__(
        self,
        *,
        hf_config: Any,
        tokenizer: Any,
        references: Sequence[Path],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        import transformers

        from lmix_hf.sampler import Sampler

        self.hf_config = hf_config
        self.dtype = dtype
        self.device = device
        self.sampler = Sampler(tokenizer)
        self.policy: Any = None
        self.references = [
            transformers.AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype).to(device).eval()
            for p in references
        ]
        for ref in self.references:
            ref.requires_grad_(False)

    def load_policy_weights(self, state_dict: Mapping[str, Tensor]) -> None:
        import transformers

        if self.policy is None:
            with torch.device(self.device):
                model = transformers.AutoModelForCausalLM.from_config(self.hf_config, dtype=self.dtype)
            model.requires_grad_(False)
            self.policy = model.eval()
        missing, unexpected = self.policy.load_state_dict(dict(state_dict), strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise BackendError(
                f"exported weights do not fit the HF model: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )

    def generate(self, request: GenerationRequest, *, combiner: PolicyCombiner) -> Generation:
        if self.policy is None:
            raise BackendError("the rollout engine has no policy weights yet")
        if request.distribution == "policy":
            refs: Sequence[Any] = ()
            mix = None
        else:
            k = combiner.num_references
            if len(self.references) < k:
                raise BackendError(
                    f"the combiner needs {k} reference models; {len(self.references)} are loaded"
                )
            refs = self.references[:k]
            mix = partial(combiner.mix_logits, step=request.step)
        return self.sampler.sample(request, self.policy, refs, mix).generation


ENGINES: dict[str, type[RolloutEngine]] = {"hf": HFRolloutEngine}
