"""Position ids and 4-D attention masks from a 2-D padding mask, shared by the sampler and the backend.

Positions are ``cumsum(attention_mask) - 1`` (clamped at 0 on padding), so a row gives the same activations
whether it is left-padded, right-padded or not padded at all. Masks are built here rather than by transformers so
that every architecture receives the same pattern, including rows whose padding comes *before* real tokens:

    allowed[n, q, k] = (k ≤ q  and  attention_mask[n, k] = 1)  or  k = q

The ``k = q`` term lets a padding query attend to itself; without it a fully masked query row makes softmax return
NaN, and a NaN value vector poisons real queries through ``0 · NaN`` in the next layer. Real queries never attend
to padding keys, so the term changes nothing that is read.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lmix_core.errors import BackendError

MaskKind = Literal["bool", "additive"]

#: Attention implementations the 4-D masks are built for, with the mask format each one reads.
MASK_KINDS: dict[str, MaskKind] = {"sdpa": "bool", "eager": "additive"}


def position_ids(attention_mask: Tensor) -> Tensor:
    """``cumsum(attention_mask) - 1`` clamped at 0: the position of each token among its row's real tokens.

    Args:
        attention_mask: ``[N, S]`` 0/1 (any integer or bool dtype).

    Returns:
        ``[N, S]`` int64.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)  # [N, S]


def mask_kind(model: torch.nn.Module) -> MaskKind:
    """The mask format ``model``'s attention implementation reads; raises BackendError for unsupported ones."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in MASK_KINDS:
        raise BackendError(
            f"attention implementation {impl!r} is not supported (supported: {', '.join(sorted(MASK_KINDS))}); "
            f"load the model with attn_implementation='sdpa' or 'eager'"
        )
    return MASK_KINDS[impl]


def as_kind(allowed: Tensor, kind: MaskKind, dtype: torch.dtype) -> Tensor:
    """A boolean ``allowed`` mask as the format an attention implementation reads.

    ``bool`` keeps it (SDPA: True attends); ``additive`` gives 0 where allowed and the dtype's most negative
    finite value elsewhere (eager attention adds it to the scores).
    """
    if kind == "bool":
        return allowed
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)  # [..., Q, K]
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)  # [..., Q, K]


def causal_mask(attention_mask: Tensor, kind: MaskKind, dtype: torch.dtype) -> Tensor:
    """The 4-D mask of a full forward pass over padded rows.

    Args:
        attention_mask: ``[N, S]`` 0/1 padding mask.
        kind: mask format (see :func:`mask_kind`).
        dtype: the model's compute dtype (additive masks only).

    Returns:
        ``[N, 1, S, S]`` mask, ``allowed[n, q, k] = (k ≤ q and real[n, k]) or k = q``.
    """
    S = attention_mask.shape[-1]
    device = attention_mask.device
    real = attention_mask.bool()  # [N, S]
    causal = torch.ones(S, S, dtype=torch.bool, device=device).tril_()  # [S, S]
    allowed = causal[None] & real[:, None, :]  # [N, S, S]
    allowed |= torch.eye(S, dtype=torch.bool, device=device)[None]  # [N, S, S]
    return as_kind(allowed[:, None], kind, dtype)  # [N, 1, S, S]
