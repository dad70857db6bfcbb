r"""Per-token statistics of padded token rows under a policy, optionally mixed with frozen references.

For every scored position ``t`` of row ``i`` (``loss_mask[i, t]`` and a real token before it):

    h_i,t   = final hidden state at the previous real token (``t − 1`` in contiguous rows)
    logp    = log softmax( mix(h·W_θᵀ, [h_k·W_kᵀ]) / T )[input_ids[i, t]]
    entropy = H( softmax( mix(…) / T ) )
    ref_logp = log softmax( h_ref·W_refᵀ / T )[input_ids[i, t]]       (the KL reference alone)

Only the scored positions' hidden states are gathered (``[n_tokens, H]``) and handed to
``lmix_core.ops.mixed_logprobs.mixed_token_stats``, which never materialises more than one chunk of ``[chunk, V]``
logits. Columns that are padding in every row are trimmed before the forward pass; results are scattered back to
the batch's full ``[N, S]`` layout, zero elsewhere (``lmix_core.types`` convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lmix_core.ops.mixed_logprobs import Mix, mixed_token_stats
from lmix_core.types import TokenBatch, TokenStats
from lmix_hf.loading import head_weight
from lmix_hf.masks import causal_mask, mask_kind, position_ids


def final_hidden(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Final hidden states ``[N, S, H]`` (after the final norm) of padded rows; positions from the mask."""
    kind = mask_kind(model)
    mask = causal_mask(attention_mask, kind, head_weight(model).dtype)  # [N, 1, S, S]
    out = model.base_model(
        input_ids=input_ids, attention_mask=mask, position_ids=position_ids(attention_mask), use_cache=False
    )
    return out.last_hidden_state  # [N, S, H]


def token_stats(
    batch: TokenBatch,
    *,
    policy: Any,
    mix_refs: Sequence[Any],
    mix: Mix | None,
    kl_ref: Any | None,
    temperature: float,
    entropy: bool,
    chunk_size: int | None,
    device: torch.device,
) -> TokenStats:
    """Statistics of ``batch`` (gradient flows into ``policy`` when grad mode is on).

    Args:
        batch: the rows to score.
        policy: the trainable model.
        mix_refs: the frozen models whose logits ``mix`` reads (empty when ``mix`` is None).
        mix: the combiner's ``mix_logits`` with the step bound, or None for the policy alone.
        kl_ref: the frozen model for ``ref_logp``, or None.
        temperature: divides the combined logits.
        entropy: also return the entropy.
        chunk_size: tokens per log-prob chunk (None: automatic).
        device: where the models are.
    """
    input_ids = batch.input_ids.to(device)  # [N, S]
    attention_mask = batch.attention_mask.to(device)  # [N, S]
    N, S = input_ids.shape
    real = attention_mask.bool()  # [N, S]
    live = real.any(0).nonzero().flatten()  # columns holding a real token somewhere
    logp_full = torch.zeros(N, S, dtype=torch.float32, device=device)  # [N, S]
    ent_full = torch.zeros(N, S, dtype=torch.float32, device=device) if entropy else None  # [N, S]
    ref_full = torch.zeros(N, S, dtype=torch.float32, device=device) if kl_ref is not None else None  # [N, S]
    if live.numel() == 0:
        return TokenStats(logp=logp_full, entropy=ent_full, ref_logp=ref_full)
    lo, hi = int(live[0]), int(live[-1]) + 1
    ids, am, real_t = input_ids[:, lo:hi], attention_mask[:, lo:hi], real[:, lo:hi]  # [N, S']
    scored_in = batch.loss_mask.to(device)[:, lo:hi].bool() & real_t  # [N, S']
    cols = torch.arange(hi - lo, device=device)  # [S']
    last_real = torch.where(real_t, cols, -1).cummax(-1).values  # [N, S'] last real column at or before t
    prev = torch.cat(
        [last_real.new_full((N, 1), -1), last_real[:, :-1]], dim=1
    )  # [N, S'] previous real column
    scored = scored_in & (prev >= 0)  # [N, S']
    rows, at = scored.nonzero(as_tuple=True)  # [T], [T]
    src = prev[rows, at]  # [T]
    targets = ids[rows, at]  # [T]

    h_pol = final_hidden(policy, ids, am)[rows, src]  # [T, H]
    ref_hidden: dict[int, Tensor] = {}
    with torch.no_grad():
        for ref in (*mix_refs, *(() if kl_ref is None else (kl_ref,))):
            if id(ref) not in ref_hidden:
                ref_hidden[id(ref)] = final_hidden(ref, ids, am)[rows, src]  # [T, H_k]
    stats = mixed_token_stats(
        h_pol,
        head_weight(policy),
        [ref_hidden[id(r)] for r in mix_refs],
        [head_weight(r).detach() for r in mix_refs],
        targets,
        mix,
        temperature=temperature,
        chunk_size=chunk_size,
        entropy=entropy,
    )
    logp_full[rows, at + lo] = stats.logp.float()
    if ent_full is not None and stats.entropy is not None:
        ent_full[rows, at + lo] = stats.entropy.float()
    if ref_full is not None and kl_ref is not None:
        with torch.no_grad():
            ref = mixed_token_stats(
                ref_hidden[id(kl_ref)],
                head_weight(kl_ref).detach(),
                [],
                [],
                targets,
                None,
                temperature=temperature,
                chunk_size=chunk_size,
                entropy=False,
            )
        ref_full[rows, at + lo] = ref.logp.float()
    return TokenStats(logp=logp_full, entropy=ent_full, ref_logp=ref_full)
