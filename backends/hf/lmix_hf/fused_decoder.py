"""One-token decoding steps of Llama-family decoders (Qwen2, Llama, Qwen3), fused and stacked over models.

At small batch sizes a decoding step is dominated by per-operation overhead, not arithmetic: transformers' module
forward runs about fifty tensor operations and a dozen module calls per layer. :class:`FusedDecoder` computes the
same step from the models' own weights in about twenty operations per layer:

    x  = RMSNorm(h)
    q, k, v = split(x · [W_q; W_k; W_v]ᵀ + b)          one matmul instead of three
    q, k = QKNorm(q), QKNorm(k)                        (Qwen3 only)
    q, k = RoPE(q), RoPE(k)                            cos/sin precomputed for every step by each model's rotary
    K, V ← append k, v                                 (a :class:`~lmix_hf.kv_cache.KVBuffer`)
    h = h + SDPA(q, K, V, mask) · W_oᵀ                 queries packed per KV head (grouped-query attention)
    h = h + (SiLU(x' · W_gᵀ) ⊙ (x' · W_uᵀ)) · W_dᵀ      x' = RMSNorm(h); gate and up in one matmul

which is the transformers forward reordered, not approximated: results agree with it to float rounding (about
1e-6 in float32).

Several models of identical shapes (the policy and its references when sampling a combined distribution) are
*stacked*: their weights become ``[K, …]`` tensors and every operation above runs once for all ``K`` models
(batched matmuls, one attention call over ``K·B`` rows), so running two models costs two models' arithmetic but
one model's operation overhead. The stacked copies are made once per sampling call (one pass over the weights,
freed afterwards); :data:`STACK_LIMIT_BYTES` bounds that extra memory, above it each model is fused alone. A model
fused alone copies only its fused QKV and gate/up matrices (the other weights are used in place).

Models outside the family, or with options the step does not implement (sliding windows, non-SiLU MLPs,
tensor-parallel slicing), are decoded by transformers' own forward instead (:meth:`FusedDecoder.supports`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from lmix_hf.kv_cache import KVBuffer
from lmix_hf.loading import head_weight

#: ``config.model_type`` of the architectures whose decoder layers :class:`FusedDecoder` reproduces.
FAMILY = frozenset({"qwen2", "llama", "qwen3"})
#: Largest total parameter size of several models that are stacked into one decoder (their weights are copied).
STACK_LIMIT_BYTES = 2 * 2**30


@attrs.frozen(kw_only=True)
class _Layer:
    """Stacked weights of one decoder layer over ``K`` models (matrices ``[K, out, in]``, as in ``nn.Linear``)."""

    idx: int
    ln1: Tensor  # [K, 1, H]
    w_qkv: Tensor  # [K, (H_q + 2·H_kv)·D, H]
    b_qkv: Tensor | None  # [K, 1, (H_q + 2·H_kv)·D]
    q_norm: Tensor | None  # [K, 1, 1, D]
    k_norm: Tensor | None  # [K, 1, 1, D]
    w_o: Tensor  # [K, H, H_q·D]
    b_o: Tensor | None  # [K, 1, H]
    ln2: Tensor  # [K, 1, H]
    w_gu: Tensor  # [K, 2·I, H]
    b_gu: Tensor | None  # [K, 1, 2·I]
    w_d: Tensor  # [K, H, I]
    b_d: Tensor | None  # [K, 1, H]


@attrs.frozen(kw_only=True)
class _Shape:
    """What must agree between models for them to be stacked."""

    model_type: str
    dtype: torch.dtype
    device: torch.device
    shapes: tuple[tuple[int, ...], ...]
    eps: float
    head_dim: int
    scaling: float
    n_q: int
    n_kv: int


def _linears(layer: Any) -> list[Any]:
    attn, mlp = layer.self_attn, layer.mlp
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    return [getattr(attn, n, None) for n in names] + [
        getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")
    ]


def _shape(model: Any) -> _Shape:
    base = model.base_model
    layer0 = base.layers[0]
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    shapes += tuple((m.bias is not None,) for layer in base.layers for m in _linears(layer))
    weight = head_weight(model)
    return _Shape(
        model_type=model.config.model_type,
        dtype=weight.dtype,
        device=weight.device,
        shapes=shapes,
        eps=next(iter(_epsilons(model))),
        head_dim=int(layer0.self_attn.head_dim),
        scaling=float(layer0.self_attn.scaling),
        n_q=int(model.config.num_attention_heads),
        n_kv=int(model.config.num_key_value_heads),
    )


def _epsilons(model: Any) -> set[float]:
    """Every RMSNorm ε of ``model`` (the fused step uses one)."""
    base = model.base_model
    norms = [base.norm]
    for layer in base.layers:
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
        norms += [
            n
            for n in (getattr(layer.self_attn, "q_norm", None), getattr(layer.self_attn, "k_norm", None))
            if n is not None
        ]
    return {float(getattr(n, "variance_epsilon", float("nan"))) for n in norms}


def _stack(tensors: Sequence[Tensor], *, rows: int = 0) -> Tensor:
    """``[K, …]`` stack of one tensor per model, with ``rows`` unit dims after K."""
    if len(tensors) == 1:
        out = tensors[0].detach()[None]  # a view: one model needs no copy
    else:
        out = torch.stack([t.detach() for t in tensors])
    for _ in range(rows):
        out = out.unsqueeze(1)
    return out


def _stack_optional(tensors: Sequence[Tensor | None], *, rows: int = 0) -> Tensor | None:
    """:func:`_stack` of a tensor the models have (they share one layout, :class:`_Shape`), or None when none has it."""
    present = [t for t in tensors if t is not None]
    return _stack(present, rows=rows) if present else None


def _cat_bias(*linears: torch.nn.Linear) -> Tensor | None:
    biases = [m.bias for m in linears]
    if all(b is None for b in biases):
        return None
    return torch.cat(
        [b if b is not None else m.weight.new_zeros(m.out_features) for m, b in zip(linears, biases)]
    )


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """transformers' RMSNorm ``weight · (x / rms(x))``, normalised in float32, for stacked ``weight [K, …, H]``."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), eps=eps).mul_(weight)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x·cos + rotate_half(x)·sin`` for ``x [R, heads, D]`` and ``cos, sin [R, 1, D]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # [R, heads, D]
    return torch.addcmul(x * cos, rotated, sin)  # [R, heads, D]


def _affine(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None = None) -> Tensor:
    """``residual + x · Wᵀ + b`` for stacked ``x [K, B, in]``, ``W [K, out, in]``, in as few kernels as possible.

    ``W`` keeps ``nn.Linear``'s ``[out, in]`` layout and is read transposed: on CPU that batched GEMM is about a
    third faster than with ``[in, out]`` weights at decoding batch sizes.
    """
    w = weight.transpose(1, 2)  # [K, in, out] view
    if residual is None:
        return torch.bmm(x, w) if bias is None else torch.baddbmm(bias, x, w)  # [K, B, out]
    start = residual if bias is None else residual + bias
    return torch.baddbmm(start, x, w)  # [K, B, out]


class FusedDecoder:
    """Decoding steps of ``K`` Llama-family models of identical shapes, run as one stacked model.

    Build one per sampling call (it copies the weights). The models' logits come back stacked ``[K, B, V]``.

    Args:
        models: transformers causal LMs for which :meth:`supports` is True and :meth:`stackable` holds.
    """

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether ``model``'s decoder layers are exactly the ones :class:`FusedDecoder` computes."""
        config = model.config
        if getattr(config, "model_type", None) not in FAMILY or getattr(config, "hidden_act", None) != "silu":
            return False
        if getattr(config, "pretraining_tp", 1) != 1:
            return False
        base = model.base_model
        if not all(hasattr(base, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
            return False
        for layer in base.layers:
            attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
            if attn is None or mlp is None or getattr(attn, "sliding_window", None) is not None:
                return False
            if not all(isinstance(m, torch.nn.Linear) for m in _linears(layer)):
                return False
            if not all(hasattr(attn, n) for n in ("head_dim", "scaling")):
                return False
            if (getattr(attn, "q_norm", None) is None) != (getattr(attn, "k_norm", None) is None):
                return False
        eps = _epsilons(model)
        return len(eps) == 1 and all(e == e for e in eps)

    @staticmethod
    def stackable(models: Sequence[Any]) -> bool:
        """Whether supported ``models`` share every shape, dtype, device and norm ε, within the memory limit."""
        if not all(FusedDecoder.supports(m) for m in models):
            return False
        if len(models) == 1:
            return True
        size = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
        return size <= STACK_LIMIT_BYTES and len({_shape(m) for m in models}) == 1

    def __init__(self, models: Sequence[Any]) -> None:
        shape = _shape(models[0])
        bases = [m.base_model for m in models]
        self.K = len(models)
        self.n_q, self.n_kv, self.head_dim, self.scaling = (
            shape.n_q,
            shape.n_kv,
            shape.head_dim,
            shape.scaling,
        )
        self.eps = shape.eps
        self.rotaries = [b.rotary_emb for b in bases]
        with torch.no_grad():
            self.embeds = [b.embed_tokens.weight.detach() for b in bases]  # K × [V_in, H]
            self.norm = _stack([b.norm.weight for b in bases], rows=1)  # [K, 1, H]
            self.head = _stack([head_weight(m) for m in models])  # [K, V, H]
            self.layers = [self._layer(i, [b.layers[i] for b in bases]) for i in range(len(bases[0].layers))]

    def _layer(self, i: int, layers: Sequence[Any]) -> _Layer:
        attn = [layer.self_attn for layer in layers]
        mlp = [layer.mlp for layer in layers]
        qkv = [torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]) for a in attn]
        gu = [torch.cat([m.gate_proj.weight, m.up_proj.weight]) for m in mlp]
        has_qk_norm = getattr(attn[0], "q_norm", None) is not None
        return _Layer(
            idx=i,
            ln1=_stack([layer.input_layernorm.weight for layer in layers], rows=1),
            w_qkv=_stack(qkv),
            b_qkv=_stack_optional([_cat_bias(a.q_proj, a.k_proj, a.v_proj) for a in attn], rows=1),
            q_norm=_stack([a.q_norm.weight for a in attn], rows=2) if has_qk_norm else None,
            k_norm=_stack([a.k_norm.weight for a in attn], rows=2) if has_qk_norm else None,
            w_o=_stack([a.o_proj.weight for a in attn]),
            b_o=_stack_optional([a.o_proj.bias for a in attn], rows=1),
            ln2=_stack([layer.post_attention_layernorm.weight for layer in layers], rows=1),
            w_gu=_stack(gu),
            b_gu=_stack_optional([_cat_bias(m.gate_proj, m.up_proj) for m in mlp], rows=1),
            w_d=_stack([m.down_proj.weight for m in mlp]),
            b_d=_stack_optional([m.down_proj.bias for m in mlp], rows=1),
        )

    def rotary_tables(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``cos, sin [K·B, T, D]`` of ``positions [B, T]`` from each model's own rotary embedding."""
        probe = self.embeds[0].new_empty(1)
        tables = [rotary(probe, positions) for rotary in self.rotaries]
        return torch.cat([c for c, _ in tables]), torch.cat([s for _, s in tables])

    def step(self, tokens: Tensor, cos: Tensor, sin: Tensor, cache: KVBuffer, mask: Tensor) -> Tensor:
        """Feed one token per row to every model; return their float32 next-token logits ``[K, B, V]``.

        Args:
            tokens: ``[B]`` token ids (the same for every model).
            cos: ``[K·B, D]`` rotary cosines of the tokens' positions, model-major (``sin`` likewise).
            sin: ``[K·B, D]``.
            cache: the stacked keys and values (``K·B`` rows, model-major); this step's go at ``cache.length``.
            mask: ``[K·B, 1, 1, L]`` additive mask over the ``L = cache.length + 1`` keys.
        """
        K, B = self.K, tokens.shape[0]
        D, n_q, n_kv = self.head_dim, self.n_q, self.n_kv
        eps = self.eps
        cos, sin = cos[:, None], sin[:, None]  # [K·B, 1, D]
        if K == 1:
            h = F.embedding(tokens, self.embeds[0])[None]  # [1, B, H]
        else:
            h = torch.stack([F.embedding(tokens, e) for e in self.embeds])  # [K, B, H]
        for layer in self.layers:
            x = _rms(h, layer.ln1, eps)  # [K, B, H]
            qkv = _affine(x, layer.w_qkv, layer.b_qkv).view(
                K * B, n_q + 2 * n_kv, D
            )  # [K·B, H_q + 2·H_kv, D]
            if layer.q_norm is None or layer.k_norm is None:  # both or neither (has_qk_norm)
                qk = _rope(qkv[:, : n_q + n_kv], cos, sin)  # [K·B, H_q + H_kv, D]
                q, k = qk[:, :n_q], qk[:, n_q:]  # [K·B, H_q, D], [K·B, H_kv, D]
            else:
                q = _rms(qkv[:, :n_q].view(K, B, n_q, D), layer.q_norm, eps).view(
                    K * B, n_q, D
                )  # [K·B, H_q, D]
                k = _rms(
                    qkv[:, n_q : n_q + n_kv].reshape(K, B, n_kv, D), layer.k_norm, eps
                )  # [K, B, H_kv, D]
                q, k = _rope(q, cos, sin), _rope(k.view(K * B, n_kv, D), cos, sin)  # [K·B, H_q | H_kv, D]
            v = qkv[:, n_q + n_kv :]  # [K·B, H_kv, D]
            keys, values = cache.update(k[:, :, None], v[:, :, None], layer.idx)  # [K·B, H_kv, L, D] each
            a = F.scaled_dot_product_attention(
                q.reshape(K * B, n_kv, n_q // n_kv, D), keys, values, attn_mask=mask, scale=self.scaling
            )  # [K·B, H_kv, H_q/H_kv, D]: each KV head's query group as its query rows
            h = _affine(a.reshape(K, B, n_q * D), layer.w_o, layer.b_o, residual=h)  # [K, B, H]
            x = _rms(h, layer.ln2, eps)  # [K, B, H]
            gate, up = _affine(x, layer.w_gu, layer.b_gu).chunk(2, dim=-1)  # [K, B, I] each
            h = _affine(F.silu(gate).mul_(up), layer.w_d, layer.b_d, residual=h)  # [K, B, H]
        h = _rms(h, self.norm, eps)  # [K, B, H]
        cache.advance(1)
        return torch.bmm(h, self.head.transpose(1, 2)).float()  # [K, B, V]
