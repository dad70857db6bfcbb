"""The built-in ``hf`` rollout engine: transformers models in this process, sampled by :class:`~lmix_hf.sampler.Sampler`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal, final

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from lmix_core.errors import BackendError
from lmix_core.interfaces.rollout_engine import EngineContext, RolloutEngine
from lmix_core.types import Generation, GenerationRequest
from lmix_hf.loading import DTYPES, check_supported, head_weight, load_causal_lm
from lmix_hf.sampler import Sampler


@final
class HFEngine(RolloutEngine):
    """Samples with transformers models in the backend's process: the policy and the references run in lockstep,
    one decoding step at a time, and ``combiner.mix_logits`` combines their last-position logits (:mod:`lmix_hf.sampler`).

    Models: when the backend lends its own (``context.shared``, the ``hf`` backend), the engine samples them
    directly: no copy, and :meth:`load_policy_weights` is only the notice that they changed in place. Otherwise
    (the ``megatron`` backend) it keeps a transformers copy of the policy, built from ``context.policy_dir``'s
    config and filled by :meth:`load_policy_weights` with the exported weights, and loads the references from
    ``context.reference_dirs``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        """HF rollout engine parameters.

        Attributes:
            decoder: ``fused`` runs the decoding steps of every model stacked in one batched forward
                (:class:`~lmix_hf.fused_decoder.FusedDecoder`) where the architecture allows, ``transformers``
                always the model's own forward; both give the same tokens up to float rounding.
            attn_implementation: attention of the models the engine loads itself (``sdpa`` or ``eager``).
        """

        decoder: Literal["fused", "transformers"] = attrs.field(
            default="fused", validator=v.in_(("fused", "transformers"))
        )
        attn_implementation: Literal["sdpa", "eager"] = attrs.field(
            default="sdpa", validator=v.in_(("sdpa", "eager"))
        )

    config: Config

    def __init__(self, config: Config, context: EngineContext) -> None:
        super().__init__(config, context)
        self.sampler = Sampler(context.tokenizer, decoder=config.decoder)
        self._loaded = context.shared is not None
        if context.shared is not None:
            self.policy: Any = context.shared.policy
            self.references: tuple[Any, ...] = tuple(context.shared.references)
            return
        import transformers

        self.policy = None
        hf_config = transformers.AutoConfig.from_pretrained(context.policy_dir, local_files_only=True)
        with torch.device(context.device):
            model = transformers.AutoModelForCausalLM.from_config(
                hf_config, dtype=DTYPES[context.dtype], attn_implementation=config.attn_implementation
            )
        check_supported(model, where=str(context.policy_dir))
        self.policy = model.requires_grad_(False).eval()
        refs = []
        for k, path in enumerate(context.reference_dirs):
            ref = load_causal_lm(
                path,
                dtype=context.dtype,
                attn_implementation=config.attn_implementation,
                device=context.device,
            )
            if head_weight(ref).shape[0] != head_weight(self.policy).shape[0]:
                raise BackendError(
                    f"reference {k} ({str(path)!r}) has a vocabulary of {head_weight(ref).shape[0]} tokens, the "
                    f"policy {head_weight(self.policy).shape[0]}; references must share the tokenizer"
                )
            refs.append(ref.requires_grad_(False).eval())
        self.references = tuple(refs)

    @property
    def needs_weights(self) -> bool:
        return self.context.shared is None

    def load_policy_weights(self, weights: Mapping[str, Tensor] | None, /) -> None:
        if not self.needs_weights:
            return  # the shared policy was updated in place
        if weights is None:
            raise BackendError("the hf rollout engine keeps its own copy of the policy and needs its weights")
        missing, unexpected = self.policy.load_state_dict(dict(weights), strict=False)
        tied = {"lm_head.weight"} if getattr(self.policy.config, "tie_word_embeddings", False) else set()
        if unexpected or set(missing) - tied:
            raise BackendError(
                f"the policy weights do not fit the engine's model: missing {sorted(set(missing) - tied)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )
        self._loaded = True

    def generate(self, request: GenerationRequest, /) -> Generation:
        if not self._loaded:
            raise BackendError(
                "the hf rollout engine has no policy weights yet: the backend must call load_policy_weights first"
            )
        combiner = self.context.combiner
        refs: Sequence[Any] = ()
        mix = None
        if request.distribution != "policy":
            k = combiner.num_references
            if len(self.references) < k:
                raise BackendError(
                    f"the combiner mixes {k} reference model(s); the engine has {len(self.references)}"
                )
            refs = self.references[:k]
            mix = partial(combiner.mix_logits, step=request.step)
        was_training = self.policy.training
        self.policy.eval()
        try:
            return self.sampler.sample(request, self.policy, refs, mix).generation
        finally:
            self.policy.train(was_training)
