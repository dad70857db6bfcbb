"""Megatron ``GPTModel`` from Hugging Face Llama-, Qwen2- and Qwen3-style configs.

Config mapping (HF → megatron ``TransformerConfig``): ``normalization="RMSNorm"``, ``gated_linear_unit=True``
with ``activation_func=silu`` (``linear_fc1 = [gate; up]``), ``add_bias_linear=False``, ``add_qkv_bias`` for
Qwen2 (and Llama's ``attention_bias``), ``qk_layernorm`` for Qwen3, ``position_embedding_type="rope"`` with
``rotary_base = rope_theta`` (megatron's non-interleaved RoPE is HF's ``rotate_half``), ``kv_channels =
head_dim``, ``num_query_groups = num_key_value_heads``. Rope scaling other than ``default`` is refused.

Layer specs:
    * ``te``: ``get_gpt_layer_with_transformer_engine_spec`` (GPU with Transformer Engine installed);
    * ``local``: megatron's local modules with two CPU-safe replacements, also used on a GPU without TE:
      :class:`SDPACoreAttention` (``torch.nn.functional.scaled_dot_product_attention``; megatron's local
      ``DotProductAttention`` needs CUDA buffers and a materialised ``[s, s]`` mask) and :class:`RMSNorm` (HF's
      RMSNorm formula, fp32 statistics; supports sequence parallelism, which ``WrappedTorchNorm`` refuses).
    * ``auto``: ``te`` when CUDA and Transformer Engine are both available, else ``local``.

Both specs give the same distributed-checkpoint keys (the local spec maps its norm names onto TE's), so a
checkpoint written with one loads with the other.

Vocabulary: megatron splits the vocabulary evenly over TP ranks, so the embedding and output rows are padded to a
multiple of TP (``padded_vocab_size``); padded rows are zero and padded logits are masked out by
:mod:`lmix_megatron.vocab_parallel`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from lmix_core.errors import BackendError

__all__ = [
    "Arch",
    "RMSNorm",
    "SDPACoreAttention",
    "SpecKind",
    "build_gpt_model",
    "resolve_spec_kind",
    "transformer_config",
]

SpecKind = Literal["auto", "te", "local"]
Dtype = Literal["float32", "bfloat16"]

_SUPPORTED = ("llama", "qwen2", "qwen3")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@attrs.frozen(kw_only=True)
class Arch:
    """What lmix needs to know about an HF decoder config (one of Llama, Qwen2, Qwen3).

    Attributes:
        model_type: ``llama``, ``qwen2`` or ``qwen3``.
        num_layers, hidden_size, ffn_hidden_size, num_heads, num_kv_heads, head_dim: sizes.
        vocab_size: the HF vocabulary (embedding rows).
        qkv_bias: q/k/v projections carry a bias (Qwen2).
        qk_norm: per-head RMSNorm on queries and keys (Qwen3).
        tied: input embedding and LM head share one matrix.
        rope_theta: RoPE base.
        norm_eps: RMSNorm epsilon.
        max_positions: ``max_position_embeddings``.
    """

    model_type: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    qkv_bias: bool
    qk_norm: bool
    tied: bool
    rope_theta: float
    norm_eps: float
    max_positions: int

    @classmethod
    def from_hf(cls, hf_config: Any) -> Arch:
        """Read an HF ``PretrainedConfig``; raises :class:`BackendError` for what megatron cannot express."""
        model_type = getattr(hf_config, "model_type", None)
        if model_type not in _SUPPORTED:
            raise BackendError(
                f"the megatron backend supports HF model types {_SUPPORTED} (got {model_type!r}); "
                "use backend type 'hf' for other architectures"
            )
        act = getattr(hf_config, "hidden_act", "silu")
        if act != "silu":
            raise BackendError(f"hidden_act must be 'silu' for {model_type} (got {act!r})")
        if getattr(hf_config, "mlp_bias", False):
            raise BackendError("mlp_bias=True is not supported by the megatron backend")
        num_heads = int(hf_config.num_attention_heads)
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        if model_type == "llama" and attention_bias:
            raise BackendError(
                "llama attention_bias=True (o_proj bias) is not supported by the megatron backend"
            )
        if model_type == "qwen3" and attention_bias:
            raise BackendError("qwen3 attention_bias=True is not supported by the megatron backend")
        if getattr(hf_config, "use_sliding_window", False):
            raise BackendError("sliding-window attention is not supported by the megatron backend")
        return cls(
            model_type=model_type,
            num_layers=int(hf_config.num_hidden_layers),
            hidden_size=int(hf_config.hidden_size),
            ffn_hidden_size=int(hf_config.intermediate_size),
            num_heads=num_heads,
            num_kv_heads=int(getattr(hf_config, "num_key_value_heads", None) or num_heads),
            head_dim=int(head_dim),
            vocab_size=int(hf_config.vocab_size),
            qkv_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            tied=bool(getattr(hf_config, "tie_word_embeddings", False)),
            rope_theta=_rope_theta(hf_config),
            norm_eps=float(hf_config.rms_norm_eps),
            max_positions=int(getattr(hf_config, "max_position_embeddings", 4096)),
        )

    def padded_vocab_size(self, tp: int) -> int:
        """The vocabulary rounded up to a multiple of ``tp`` (megatron splits it evenly)."""
        return int(math.ceil(self.vocab_size / tp) * tp)

    def check_parallel(self, *, tp: int, pp: int) -> None:
        """Raise :class:`BackendError` when the sizes do not split over ``tp`` × ``pp``."""
        problems = []
        if self.num_heads % tp or self.num_kv_heads % tp:
            problems.append(
                f"num_attention_heads ({self.num_heads}) and num_key_value_heads ({self.num_kv_heads})"
            )
        if self.ffn_hidden_size % tp:
            problems.append(f"intermediate_size ({self.ffn_hidden_size})")
        if problems:
            raise BackendError(f"{' and '.join(problems)} must be divisible by tp={tp}; choose a smaller tp")
        if self.num_layers % pp:
            raise BackendError(
                f"num_hidden_layers ({self.num_layers}) must be divisible by pp={pp}; choose another pp"
            )


def _rope_theta(hf_config: Any) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise BackendError(
            f"rope type {rope_type!r} is not supported by the megatron backend (only 'default')"
        )
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if theta is None:
        raise BackendError("the HF config has no rope_theta")
    return float(theta)


def _te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_spec_kind(kind: SpecKind) -> Literal["te", "local"]:
    """``auto`` → ``te`` with CUDA and Transformer Engine, else ``local``; ``te`` without them raises."""
    if kind == "local":
        return "local"
    usable = torch.cuda.is_available() and _te_available()
    if kind == "te" and not usable:
        raise BackendError("layer_spec='te' needs a CUDA device and transformer_engine installed")
    return "te" if usable else "local"


def transformer_config(
    arch: Arch,
    *,
    tp: int,
    pp: int,
    dtype: Dtype,
    sequence_parallel: bool = False,
    variable_seq_lengths: bool = True,
    recompute: bool = False,
) -> Any:
    """The megatron ``TransformerConfig`` for ``arch`` at the given parallel layout.

    Dropout is 0 (RL fine-tuning convention and determinism). Weights are loaded from HF or a checkpoint after
    construction, but ``perform_initialization`` must stay True: megatron sets the ``tensor_model_parallel``
    attributes of its parallel layers inside the initialisers, and without them the optimiser counts TP-split
    weights as TP duplicates, which silently under-reports the gradient norm (and mis-clips) when TP > 1.
    ``variable_seq_lengths`` lets each micro-batch be trimmed to its own length under PP; megatron's config
    check requires ``moe_token_dispatcher_type="alltoall"`` for it even for dense models.
    """
    from megatron.core.transformer import TransformerConfig

    params_dtype = DTYPES[dtype]
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,
        ffn_hidden_size=arch.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=sequence_parallel and tp > 1,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=dtype == "bfloat16",
        use_cpu_initialization=not torch.cuda.is_available(),
        perform_initialization=True,
        variable_seq_lengths=variable_seq_lengths,
        moe_token_dispatcher_type="alltoall",
        batch_p2p_comm=False,
        batch_p2p_sync=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        recompute_granularity="full" if recompute else None,
        recompute_method="uniform" if recompute else None,
        recompute_num_layers=1 if recompute else None,
    )


class RMSNorm(torch.nn.Module):
    """``y = w · x / sqrt(mean(x²) + eps)`` with fp32 statistics, exactly as HF Llama/Qwen's RMSNorm.

    Marks its weight ``sequence_parallel`` under sequence parallelism, so that megatron's
    ``finalize_model_grads`` all-reduces its gradient over TP ranks (each rank sees a slice of the sequence).
    """

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-6, **_: Any) -> None:
        super().__init__()
        self.eps = eps
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype, device=device))
        # megatron reads this flag off the parameter (sequence-parallel gradient all-reduce)
        self.weight.sequence_parallel = bool(config.sequence_parallel)  # type: ignore[attr-defined]

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()  # [..., h]
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)  # [..., h]
        return self.weight * y.to(x.dtype)  # [..., h]


def _sdpa_core_attention_class() -> type:
    from megatron.core.transformer.module import MegatronModule

    class SDPACoreAttention(MegatronModule):
        """Causal attention through ``F.scaled_dot_product_attention`` (GQA without repeating K/V).

        Drop-in for megatron's ``core_attention``: takes ``q [s, b, n_q, d]``, ``k, v [s, b, n_kv, d]`` and
        returns ``[s, b, n_q·d]``. ``attention_mask`` None means causal; a bool mask (True = masked) is honoured.
        """

        def __init__(
            self,
            config: Any,
            layer_number: int,
            attn_mask_type: Any,
            attention_type: str,
            attention_dropout: float | None = None,
            softmax_scale: float | None = None,
            cp_comm_type: str | None = None,
            pg_collection: Any = None,
            **_: Any,
        ) -> None:
            super().__init__(config=config)
            if config.context_parallel_size != 1:
                raise BackendError("context parallelism needs the Transformer Engine layer spec")
            self.softmax_scale = (
                softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
            )
            self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

        def forward(
            self,
            query: Tensor,
            key: Tensor,
            value: Tensor,
            attention_mask: Tensor | None,
            attn_mask_type: Any = None,
            attention_bias: Tensor | None = None,
            packed_seq_params: Any = None,
            **_: Any,
        ) -> Tensor:
            if packed_seq_params is not None:
                raise BackendError("packed sequences need the Transformer Engine layer spec")
            s, b = query.shape[0], query.shape[1]
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, n, s, d]
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=None if attention_mask is None else ~attention_mask,
                is_causal=attention_mask is None,
                dropout_p=self.dropout if self.training else 0.0,
                scale=self.softmax_scale,
                enable_gqa=k.shape[1] != q.shape[1],
            )  # [b, n_q, s, d]
            return out.permute(2, 0, 1, 3).reshape(s, b, -1)  # [s, b, n_q·d]

    return SDPACoreAttention


_SDPA: list[type] = []


def SDPACoreAttention() -> type:  # noqa: N802 - a lazily built class (megatron is imported on first use)
    """The CPU-safe core attention class (built on first use so importing this module stays light)."""
    if not _SDPA:
        _SDPA.append(_sdpa_core_attention_class())
    return _SDPA[0]


def layer_block_spec(arch: Arch, tconfig: Any, kind: Literal["te", "local"]) -> Any:
    """The ``TransformerBlockSubmodules`` for this pipeline stage's layers plus the final norm."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    if kind == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.qk_norm)
        final_norm: Any = TENorm
    else:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=arch.qk_norm)
        spec.submodules.input_layernorm = RMSNorm
        spec.submodules.pre_mlp_layernorm = RMSNorm
        attn = spec.submodules.self_attention.submodules
        attn.core_attention = SDPACoreAttention()
        if arch.qk_norm:
            attn.q_layernorm = RMSNorm
            attn.k_layernorm = RMSNorm
        final_norm = RMSNorm
    return TransformerBlockSubmodules(
        layer_specs=[spec] * get_num_layers_to_build(tconfig), layer_norm=final_norm
    )


def build_gpt_model(arch: Arch, tconfig: Any, *, kind: Literal["te", "local"]) -> Any:
    """This rank's stage of the ``GPTModel`` (``pre_process``/``post_process`` from ``parallel_state``)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    model = GPTModel(
        config=tconfig,
        transformer_layer_spec=layer_block_spec(arch, tconfig, kind),
        vocab_size=arch.padded_vocab_size(tconfig.tensor_model_parallel_size),
        max_sequence_length=arch.max_positions,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tied,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=arch.rope_theta,
    )
    if not torch.cuda.is_available():
        return model
    return model.cuda(torch.cuda.current_device())


class hidden_states_output:  # noqa: N801 - used as a context manager, reads like a function
    """Within the block, the last stage's ``GPTModel.forward`` returns final hidden states ``[s, b, h]``.

    The final norm is part of the decoder, so these are the inputs of ``output_layer``; lmix computes logits from
    them itself (chunked, vocab-parallel) in the loss.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.saved = self.model.post_process
        self.model.post_process = False

    def __exit__(self, *exc: Any) -> None:
        self.model.post_process = self.saved
