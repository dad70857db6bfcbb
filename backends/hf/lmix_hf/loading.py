"""Loading local Hugging Face causal-LM directories, and the checks lmix's fused log-prob path relies on.

lmix never asks a model for full ``[N, S, V]`` logits: it runs the decoder (``model.base_model``) to the final
hidden states and applies the LM-head weight itself, chunk by chunk (``lmix_core.ops.mixed_logprobs``) or for the
last position only (the sampler). That is exact for the usual ``logits = h · Wᵀ`` head; models whose head adds a
bias, scales or soft-caps the logits, or whose attention uses sliding windows (the sampler builds full causal
masks), are refused with a :class:`~lmix_core.errors.BackendError` instead of being scored wrongly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmix_core.errors import BackendError
from lmix_core.progress_bars import quiet_progress

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

#: Config attributes that change logits after the LM head, with the value that means "off".
_LOGIT_TRANSFORMS: dict[str, tuple[object, ...]] = {
    "final_logit_softcapping": (None, 0, 0.0),
    "logit_softcapping": (None, 0, 0.0),
    "logit_scale": (None, 1, 1.0),
    "logits_scaling": (None, 1, 1.0),
}


def model_dir(path: str | Path, *, field: str) -> Path:
    """``path`` as a directory holding a Hugging Face model, or a BackendError that says how to get one."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise BackendError(
            f"{field}: model directory {str(path)!r} not found; build one with `lmix demo` or point {field} at a "
            f"local Hugging Face model directory"
        )
    if not (p / "config.json").is_file():
        raise BackendError(
            f"{field}: {str(path)!r} has no config.json, so it is not a Hugging Face model directory; build one "
            f"with `lmix demo` or point {field} at a local Hugging Face model directory"
        )
    return p


def load_causal_lm(path: Path, *, dtype: str, attn_implementation: str, device: torch.device) -> Any:
    """Load a causal LM from a local directory (no hub access) and check that lmix can score it exactly."""
    import transformers

    try:
        with quiet_progress():
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path, dtype=DTYPES[dtype], attn_implementation=attn_implementation, local_files_only=True
            )
    except (OSError, ValueError, KeyError) as exc:
        raise BackendError(
            f"could not load a causal LM from {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from exc
    check_supported(model, where=str(path))
    # transformers' annotation of PreTrainedModel.to is the wrapper's, not torch's (it takes a device)
    return model.to(device)  # type: ignore[arg-type]


def load_tokenizer(path: Path) -> Any:
    """The tokenizer saved with a model (its chat template included); a pad token is required."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise BackendError(
            f"could not load a tokenizer from {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise BackendError(f"the tokenizer in {str(path)!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_supported(model: Any, *, where: str = "the model") -> None:
    """Raise BackendError unless ``logits = base_model(x) · lm_head.weightᵀ`` exactly, with full attention."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise BackendError(
            f"{where}: the LM head is a {type(head).__name__}, not a Linear layer; lmix cannot score it"
        )
    if head.bias is not None:
        raise BackendError(
            f"{where}: the LM head has a bias, which lmix's fused log-prob path does not apply"
        )
    config = model.config
    for name, off in _LOGIT_TRANSFORMS.items():
        value = getattr(config, name, None)
        if value not in off:
            raise BackendError(
                f"{where}: config.{name} = {value!r} transforms the logits after the LM head; lmix's fused "
                f"log-prob path does not apply it, so this architecture is not supported"
            )
    layer_types = getattr(config, "layer_types", None) or ()
    if getattr(config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
        raise BackendError(
            f"{where}: sliding-window or non-full attention layers are not supported by lmix's masks "
            f"(layer types: {sorted(set(layer_types))}, use_sliding_window={getattr(config, 'use_sliding_window', None)})"
        )


def head_weight(model: Any) -> Tensor:
    """The LM-head weight ``[V, H]`` (tied or not)."""
    return model.get_output_embeddings().weight


def eos_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """Every token id that ends a response: the generation config's ``eos_token_id`` (int or list) and the
    tokenizer's ``eos_token_id``."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if source is None:
            continue
        for i in source if isinstance(source, list | tuple) else (source,):
            if int(i) not in ids:
                ids.append(int(i))
    return tuple(ids)
