"""Tiny random-init causal LMs (Qwen2, Llama, Qwen3) built from configs, for the demo, tests and benchmarks.

No weights are downloaded: the model is initialised from its transformers config under a fixed seed, so the
same arguments give bit-identical parameters on every call (the global torch RNG is left untouched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import transformers

from lmix_core.errors import ConfigError
from lmix_core.progress_bars import quiet_progress
from lmix_core.synthetic.tokenizer import EOS, build_tokenizer

Arch = Literal["qwen2", "llama", "qwen3"]

_CONFIG_CLASSES: dict[str, type[transformers.PretrainedConfig]] = {
    "qwen2": transformers.Qwen2Config,
    "llama": transformers.LlamaConfig,
    "qwen3": transformers.Qwen3Config,
}


def build_tiny_model(
    tokenizer: transformers.PreTrainedTokenizerBase,
    *,
    arch: Arch = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    max_position_embeddings: int = 512,
    vocab_size: int | None = None,
) -> transformers.PreTrainedModel:
    """Build a random-init causal LM in float32 and eval mode.

    Args:
        tokenizer: fixes the vocabulary size and the pad/bos/eos ids written into the config.
        arch: ``qwen2``, ``llama`` or ``qwen3`` (Qwen3 adds q/k norms; ``head_dim`` is set).
        hidden_size: model width; must be divisible by ``num_heads``.
        num_layers: number of decoder layers.
        num_heads: attention heads; must be divisible by ``num_kv_heads``.
        num_kv_heads: key/value heads (grouped-query attention).
        intermediate_size: MLP width; ``None`` means ``4 * hidden_size``.
        tie_word_embeddings: share the input embedding and the LM head.
        seed: torch seed for the initialisation (a forked RNG: the global one is not advanced).
        max_position_embeddings: longest sequence the rotary embedding is configured for.
        vocab_size: embedding rows; ``None`` means ``len(tokenizer)``. Larger values pad the vocabulary
            (e.g. the speed benchmark's 2048); smaller ones are rejected.

    Returns:
        The model, float32, in eval mode. ``generation_config.eos_token_id`` lists ``tokenizer.eos_token_id``
        and, when the tokenizer has it, ``<|eos|>`` (the document separator), so generation stops at either.

    Raises:
        ConfigError: on an unknown ``arch`` or inconsistent sizes.
    """
    if arch not in _CONFIG_CLASSES:
        raise ConfigError(f"arch must be one of {sorted(_CONFIG_CLASSES)} (got {arch!r})")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ConfigError(
            f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}) and num_heads by "
            f"num_kv_heads ({num_kv_heads})"
        )
    n_vocab = len(tokenizer) if vocab_size is None else vocab_size
    if n_vocab < len(tokenizer):
        raise ConfigError(f"vocab_size must be at least len(tokenizer)={len(tokenizer)} (got {vocab_size})")
    eos_ids = [tokenizer.eos_token_id]
    doc_eos = tokenizer.convert_tokens_to_ids(EOS) if EOS in tokenizer.get_vocab() else None
    if doc_eos is not None and doc_eos not in eos_ids:
        eos_ids.append(doc_eos)
    kwargs: dict[str, Any] = dict(
        vocab_size=n_vocab,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size if intermediate_size is None else intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if arch == "qwen3":
        kwargs["head_dim"] = hidden_size // num_heads
    config = _CONFIG_CLASSES[arch](**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.eval()


def save_tiny_model_dir(
    directory: Path | str,
    *,
    tokenizer: transformers.PreTrainedTokenizerBase | None = None,
    **model_kwargs: Any,
) -> Path:
    """Write a tiny model and its tokenizer as a normal HF directory.

    The folder loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and
    ``transformers.AutoTokenizer.from_pretrained``.

    Args:
        directory: target folder (created if missing).
        tokenizer: the tokenizer to pair with the model; ``None`` builds :func:`build_tokenizer`.
        **model_kwargs: keyword arguments of :func:`build_tiny_model` (``arch``, ``seed``, ...).

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer() if tokenizer is None else tokenizer
    model = build_tiny_model(tokenizer, **model_kwargs)
    with quiet_progress():
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
