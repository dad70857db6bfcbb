r"""LoRA policies (``peft``), with the starting model as an adapter-free view of the same weights.

LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685) freezes every weight
``W₀`` of the policy and trains a low-rank update of the chosen linear layers:

    W = W₀ + (α / r) · B A          A ∈ ℝ^{r×in} (Kaiming-uniform), B ∈ ℝ^{out×r} (zeros), so W = W₀ at step 0

The reference of logit averaging, ``weighted`` mixing and a KL penalty is usually the starting model ``W₀``. With
LoRA that model is already in memory, under the adapters: :func:`attach` builds the reference as an
*adapter-free view*, a second module tree whose linear layers are the LoRA layers' own ``base_layer`` modules and
whose other modules share every parameter and buffer with the policy. It computes exactly what peft's
``disable_adapter()`` computes (a LoRA layer with its adapters disabled returns ``base_layer(x)``), without
toggling flags on shared modules, so the policy and the reference can run in lockstep (one decoding step of each,
each with its own KV cache) and the reference stays in eval mode while the policy trains. One copy of the weights
serves training, scoring and sampling; the view's linear layers are plain ``nn.Linear``, so the sampler's fused
decoder runs it. The policy's LoRA layers are decoded through transformers' forward.

The adapters are initialised from a generator seeded with the run's seed (the same on every rank), outside the
global generator's stream. Checkpoints hold the adapter weights only (:class:`AdapterState`); exports write either
peft's adapter directory or a merged ordinary transformers directory (:meth:`LoraPolicy.save`).
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lmix_core.errors import BackendError

#: What :meth:`LoraPolicy.save` writes: peft's adapter directory, or the merged weights as a transformers directory.
Export = Literal["merged", "adapter"]


def attach(
    model: Any,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
    seed: int,
) -> LoraPolicy:
    """Inject LoRA adapters into ``model`` in place (its weights are frozen) and return the pair policy/reference.

    Args:
        model: a transformers causal LM (lmix's loaders have checked it).
        rank: ``r``, the adapters' rank.
        alpha: ``α``; the update is scaled by ``α / r``.
        dropout: dropout on the adapters' input (training mode only).
        target_modules: module names (or name suffixes) to adapt; empty means every linear layer of the decoder
            (peft's ``all-linear``: the LM head excluded).
        seed: seeds the adapters' initialisation.
    """
    try:
        import peft
    except ImportError as exc:
        raise BackendError(
            "backend.lora_rank > 0 needs the `peft` package (a dependency of lmix-hf); install it with "
            "`pip install peft`"
        ) from exc
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int, but only computes α / r: a float works
        lora_dropout=dropout,
        target_modules=list(target_modules) if target_modules else "all-linear",
        bias="none",
    )
    devices = [model.device] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # peft asks transformers for a deprecated gradient-checkpointing attribute: not lmix's to fix
            warnings.simplefilter("ignore", FutureWarning)
            torch.manual_seed(seed)
            peft_model = peft.get_peft_model(model, config)
    except ValueError as exc:
        raise BackendError(f"backend.lora_target_modules: {exc}") from exc
    return LoraPolicy(peft_model)


class LoraPolicy:
    """A policy with LoRA adapters and its adapter-free view (built by :func:`attach`).

    Attributes:
        model: the transformers model with the adapters injected (the trainable policy; only the adapters
            require gradients).
        reference: the adapter-free view: the starting model, sharing every weight with ``model``.
    """

    def __init__(self, peft_model: Any) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.peft_model = peft_model
        self.model = peft_model.get_base_model()
        # peft's LoRA layer classes (lora.Linear, ...): BaseTunerLayer does not declare get_delta_weight
        self._layers: dict[str, Any] = {
            name: m for name, m in self.model.named_modules() if isinstance(m, BaseTunerLayer)
        }
        frozen = {id(self.model.get_output_embeddings()), id(self.model.get_input_embeddings())}
        adapted = sorted(n for n, m in self._layers.items() if id(m) in frozen)
        if adapted:
            raise BackendError(
                f"backend.lora_target_modules: {adapted} are the embeddings or the LM head; lmix reads the head "
                "weight directly, so only the decoder's linear layers can carry adapters"
            )
        self.reference = _adapter_free_view(self.model, self._layers)
        self.adapter_state = AdapterState(self.model)

    @property
    def adapted_modules(self) -> tuple[str, ...]:
        """Names of the layers that carry adapters."""
        return tuple(self._layers)

    def merged_state_dict(self) -> dict[str, Tensor]:
        """The policy's weights as a plain transformers ``state_dict``: ``W₀ + (α/r)·B A`` for every adapted layer,
        the shared tensors elsewhere (the model is not modified: merging in place and back would round ``W₀``)."""
        view_state = self.reference.state_dict()
        with torch.no_grad():
            for name, layer in self._layers.items():
                key = f"{name}.weight"
                w0 = view_state[key]  # [out, in]
                delta = layer.get_delta_weight(layer.active_adapters[0])  # [out, in]
                view_state[key] = (w0.float() + delta.float()).to(w0.dtype)  # [out, in]
        return view_state

    def save(self, path: Path, *, export: Export) -> None:
        """Write the policy to ``path``: ``adapter``, peft's adapter directory (``adapter_config.json``,
        ``adapter_model.safetensors``; load it with ``peft.PeftModel.from_pretrained`` over the starting model);
        ``merged``, an ordinary transformers directory of the merged weights."""
        if export == "adapter":
            self.peft_model.save_pretrained(path)
        else:
            self.reference.save_pretrained(path, state_dict=self.merged_state_dict())


class AdapterState:
    """The trainable (adapter) parameters behind the ``state_dict`` interface the checkpoint files use.

    ``state_dict`` holds only the adapters, by their names in the policy; ``load_state_dict`` requires exactly those
    names and shapes (KeyError or ValueError otherwise).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._params = {name: p for name, p in model.named_parameters() if p.requires_grad}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(self._params.values())

    def state_dict(self) -> dict[str, Tensor]:
        return {name: p.detach() for name, p in self._params.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        missing, unexpected = set(self._params) - set(state), set(state) - set(self._params)
        if missing or unexpected:
            raise KeyError(
                f"adapter weights do not match: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
            )
        for name, p in self._params.items():
            if tuple(state[name].shape) != tuple(p.shape):
                raise ValueError(f"{name} has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}")
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(state[name])


def _adapter_free_view(model: torch.nn.Module, layers: Mapping[str, Any]) -> Any:
    """A module tree computing ``model`` without its adapters, sharing every parameter and buffer with it.

    ``copy.deepcopy`` with every tensor pre-seeded in the memo copies only the module objects (and the config);
    each LoRA layer is then replaced by its ``base_layer``. The view is frozen and in eval mode.
    """
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    view = copy.deepcopy(model, memo)
    modules = dict(view.named_modules())
    for name in layers:
        parent, _, child = name.rpartition(".")
        setattr(modules[parent], child, modules[name].get_base_layer())
    shared = {id(t) for t in itertools.chain(model.parameters(), model.buffers())}
    if not all(id(t) in shared for t in itertools.chain(view.parameters(), view.buffers())):
        raise BackendError("the adapter-free reference view copied a tensor instead of sharing it")
    return view.requires_grad_(False).eval()
