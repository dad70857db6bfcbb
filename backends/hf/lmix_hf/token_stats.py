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

Shared prompts (``shared_prompt=True``): the ``G`` rollouts of a group repeat one prompt, so its keys and values are
the same in every row. Rows are grouped by their context, the tokens before their first scored token (found from
the tokens, so any row order and any split of a group over micro-batches is handled; rows of one group that land
in different micro-batches share within each). Each distinct context of ``U`` is forwarded once, left-padded to
``P`` columns, recording every layer's keys and values ``K_u, V_u [U, H_kv, P, D]``; the continuations (the scored
part of every row, ``[N, C]``) are then forwarded with ``K_u, V_u`` gathered to their rows and prepended:

    attention(q_i,t) over [K_{u(i)}; K_i,≤t]        (the 4-D mask and positions of the row ``[context][continuation]``)

which is the ordinary forward reordered: every real token sees the same keys at the same positions, so the outputs
agree to float rounding, and the gradient reaches the context's computation through the gathered keys and values
(autograd sums it over the group). ``N·S`` token positions become ``U·P + N·C``. It is used only where it is exact
and smaller: not for a model in training mode with dropout (the group would share one dropout mask) or gradient
checkpointing (transformers drops the cache there), and not when no context repeats.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lmix_core.ops.mixed_logprobs import Mix, MixedTokenStats, mixed_token_stats
from lmix_core.types import TokenBatch, TokenStats
from lmix_hf import parallel
from lmix_hf.loading import head_weight
from lmix_hf.masks import as_kind, causal_mask, mask_kind, position_ids


def final_hidden(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Final hidden states ``[N, S, H]`` (after the final norm) of padded rows; positions from the mask."""
    kind = mask_kind(model)
    mask = causal_mask(attention_mask, kind, head_weight(model).dtype)  # [N, 1, S, S]
    out = model.base_model(
        input_ids=input_ids, attention_mask=mask, position_ids=position_ids(attention_mask), use_cache=False
    )
    return out.last_hidden_state  # [N, S, H]


class SharedPrompts(NamedTuple):
    """Rows regrouped as ``[distinct context][own continuation]`` (see the module docstring).

    Attributes:
        group: ``[N]`` index of each row's context in ``context_ids`` (-1 for a row with nothing scored, which is
            not forwarded).
        start: ``[N]`` first continuation column of each row in the batch (its first scored column).
        slot: ``[N, S]`` column of each real context token in ``context_ids`` (meaningful before ``start``).
        context_ids: ``[U, P]`` the distinct contexts' real tokens, left-padded to ``P`` columns.
        context_mask: ``[U, P]`` their padding mask.
        rows: ``[N']`` the forwarded rows (those with a scored token).
        ids: ``[N', C]`` those rows' continuations (columns ``start … last scored``), right-padded.
        mask: ``[N', C]`` their padding mask.
    """

    group: Tensor
    start: Tensor
    slot: Tensor
    context_ids: Tensor
    context_mask: Tensor
    rows: Tensor
    ids: Tensor
    mask: Tensor


def shared_prompts(input_ids: Tensor, attention_mask: Tensor, scored: Tensor) -> SharedPrompts | None:
    """Group rows by context; None when forwarding them shared would not cover fewer token positions.

    A row's context is the real tokens before its first scored token, padding dropped (a row's padding changes
    nothing it computes), so left- and right-padded rows of one group share it.

    Args:
        input_ids: ``[N, S]`` token rows.
        attention_mask: ``[N, S]`` their padding mask.
        scored: ``[N, S]`` bool, the positions whose statistics are read.
    """
    N, S = input_ids.shape
    device = input_ids.device
    rows = scored.any(-1).nonzero().flatten()  # [N']
    n = rows.numel()
    if n < 2:
        return None
    cols = torch.arange(S, device=device)  # [S]
    start = torch.where(scored, cols, S).amin(-1)  # [N] first scored column (S: none)
    end = (
        torch.where(scored, cols, -1).amax(-1) + 1
    )  # [N] past the last scored column (later tokens are unread)
    context = attention_mask.bool() & (cols[None] < start[:, None])  # [N, S] real context tokens
    length = context.sum(-1)  # [N]
    P = int(length[rows].max())
    slot = P - length[:, None] + context.long().cumsum(-1) - 1  # [N, S] right-aligned column in P
    packed = torch.full((N, P + 1), -1, dtype=torch.long, device=device)  # [N, P + 1] last column: a sink
    packed.scatter_(1, torch.where(context, slot, P), input_ids)  # [N, P + 1]
    key = torch.cat([length[rows, None], packed[rows, :P]], 1)  # [N', 1 + P] (length, real context tokens)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)  # [U, 1 + P], [N']
    U = distinct.shape[0]
    st = start[rows]  # [N']
    C = int((end[rows] - st).max())
    if U == n or U * P + n * C >= N * S:
        return None
    context_mask = (torch.arange(P, device=device)[None] >= P - distinct[:, :1]).long()  # [U, P]
    context_ids = distinct[:, 1:].clamp(min=0)  # [U, P] padding as token 0
    src = st[:, None] + torch.arange(C, device=device)[None]  # [N', C] column start + j of the row
    in_row = src < end[rows, None]  # [N', C]
    src = src.clamp(max=S - 1)  # [N', C]
    group = torch.full((N,), -1, dtype=torch.long, device=device)  # [N]
    group[rows] = inverse
    return SharedPrompts(
        group=group,
        start=start,
        slot=slot,
        context_ids=context_ids,
        context_mask=context_mask,
        rows=rows,
        ids=torch.where(in_row, input_ids[rows].gather(1, src), 0),  # [N', C]
        mask=torch.where(in_row, attention_mask[rows].long().gather(1, src), 0),  # [N', C]
    )


def shares_exactly(model: Any) -> bool:
    """Whether a shared-context forward of ``model`` in its current mode equals the ordinary one.

    Not in training mode with dropout (one mask would serve the whole group) or gradient checkpointing (whose
    layers drop the key/value cache in training).
    """
    if not model.training:
        return True
    # transformers 5.x renamed is_gradient_checkpointing (the old name warns)
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else None
    if getattr(model, name or "is_gradient_checkpointing", False):
        return False
    config = model.config.to_dict()
    rates = [
        v
        for k, v in config.items()
        if ("dropout" in k or "pdrop" in k) and isinstance(v, int | float) and not isinstance(v, bool)
    ]
    modules = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    return not any(r > 0 for r in (*rates, *modules))


class _Record:
    """The context pass's cache: keeps each layer's keys and values ``[U, H_kv, P, D]`` and returns them."""

    def __init__(self) -> None:
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[Tensor, Tensor]:
        self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return key_states, value_states


class _Prepend:
    """The continuation pass's cache: each row's context keys and values, then its own ``[N', H_kv, P + q, D]``."""

    def __init__(self, context: _Record, group: Tensor) -> None:
        self.context, self.group = context, group

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[Tensor, Tensor]:
        keys = self.context.keys[layer_idx].index_select(0, self.group)  # [N', H_kv, P, D]
        values = self.context.values[layer_idx].index_select(0, self.group)  # [N', H_kv, P, D]
        return torch.cat([keys, key_states], -2), torch.cat([values, value_states], -2)


def shared_hidden(model: Any, shared: SharedPrompts, rows: Tensor, src: Tensor) -> Tensor:
    """Final hidden states ``[T, H]`` at batch positions ``(rows, src)``, contexts forwarded once per group."""
    kind = mask_kind(model)
    dtype = head_weight(model).dtype
    cache_arg = (
        "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"
    )
    P, C = shared.context_ids.shape[1], shared.ids.shape[1]
    record = _Record()
    h_context = model.base_model(
        input_ids=shared.context_ids,
        attention_mask=causal_mask(shared.context_mask, kind, dtype),  # [U, 1, P, P]
        position_ids=position_ids(shared.context_mask),
        use_cache=True,
        **{cache_arg: record},
    ).last_hidden_state  # [U, P, H]
    group = shared.group[shared.rows]  # [N']
    full = torch.cat([shared.context_mask.index_select(0, group), shared.mask], 1)  # [N', P + C]
    q = torch.arange(P, P + C, device=full.device)  # [C] each query's column in the full row
    k = torch.arange(P + C, device=full.device)  # [P + C]
    allowed = (k[None] <= q[:, None])[None] & full.bool()[:, None, :]  # [N', C, P + C]
    allowed |= (k[None] == q[:, None])[None]  # [N', C, P + C]
    h_rows = model.base_model(
        input_ids=shared.ids,
        attention_mask=as_kind(allowed[:, None], kind, dtype),  # [N', 1, C, P + C]
        position_ids=position_ids(full)[:, P:],
        use_cache=True,
        **{cache_arg: _Prepend(record, group)},
    ).last_hidden_state  # [N', C, H]
    # batch column c of row i is context column slot[i, c] before start_i, continuation column c − start_i after
    start = shared.start[rows]  # [T]
    where = torch.full_like(shared.group, -1)  # [N]
    where[shared.rows] = torch.arange(shared.rows.numel(), device=where.device)
    in_context = src < start  # [T]
    flat = torch.cat([h_context.flatten(0, 1), h_rows.flatten(0, 1)])  # [U·P + N'·C, H]
    index = torch.where(
        in_context,
        shared.group[rows] * P + shared.slot[rows, src],
        h_context.shape[0] * P + where[rows] * C + (src - start),
    )  # [T]
    return flat[index]  # [T, H]


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
    shared_prompt: bool = False,
    lockstep: Sequence[Any] = (),
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
        shared_prompt: forward each repeated context once per group where that is exact (module docstring).
        lockstep: frozen models forwarded (after the ones used, in this order) only for their collectives: under
            FSDP every rank forwards the same models in the same order (:mod:`lmix_hf.parallel`).
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

    shared = shared_prompts(ids, am, scored) if shared_prompt else None

    def hidden(model: Any) -> Tensor:
        if shared is not None and shares_exactly(model):
            return shared_hidden(model, shared, rows, src)  # [T, H]
        return final_hidden(model, ids, am)[rows, src]  # [T, H]

    ref_hidden: dict[int, Tensor] = {}
    with torch.no_grad():
        for ref in (*mix_refs, *(() if kl_ref is None else (kl_ref,)), *lockstep):
            if id(ref) not in ref_hidden:
                ref_hidden[id(ref)] = parallel.run(ref, hidden)  # [T, H_k]

    def policy_stats(
        model: Any,
    ) -> MixedTokenStats:  # inside the data-parallel wrapper's forward (lmix_hf.parallel)
        return mixed_token_stats(
            hidden(model),  # [T, H]
            head_weight(model),
            [ref_hidden[id(r)] for r in mix_refs],
            [head_weight(parallel.unwrap(r)).detach() for r in mix_refs],
            targets,
            mix,
            temperature=temperature,
            chunk_size=chunk_size,
            entropy=entropy,
        )

    stats = parallel.run(policy, policy_stats)
    logp_full[rows, at + lo] = stats.logp.float()
    if ent_full is not None and stats.entropy is not None:
        ent_full[rows, at + lo] = stats.entropy.float()
    if ref_full is not None and kl_ref is not None:
        with torch.no_grad():
            ref = mixed_token_stats(
                ref_hidden[id(kl_ref)],
                head_weight(parallel.unwrap(kl_ref)).detach(),
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
