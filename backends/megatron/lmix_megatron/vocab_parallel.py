r"""Log-probs, entropy and combined (mixed) log-probs from vocab-parallel logits, without gathering the vocabulary.

TP rank ``r`` holds the logits of vocabulary rows ``[r·V/TP, (r+1)·V/TP)`` (megatron's ``ColumnParallelLinear``
output layer). For one token with shard logits ``z_r`` and target ``a``::

    log π(a) = z[a] − log Σ_r Σ_v exp z_r[v]                   (one MAX and one SUM all-reduce)
    H        = log Z − Σ_r Σ_v π_r[v] z_r[v]                   (one more SUM all-reduce)
    ∂H/∂z_r  = −π_r ⊙ (z_r − Σ π z)                            (rank-local: no collective in backward)

* :func:`log_probs` is ``−megatron.core.tensor_parallel.vocab_parallel_cross_entropy`` on a *clone* of the logits
  (megatron subtracts the max in place, which would corrupt any other consumer of the logits).
* :func:`entropy` is a custom autograd Function. Composing it from autograd ops and megatron's
  ``reduce_from_tensor_model_parallel_region`` (all-reduce forward, identity backward) gives the right value but a
  wrong gradient: the identity backward is only valid when every TP rank consumes the reduced value identically,
  but ``π_r = exp(z_r)/Z`` is rank-local (a measured max gradient error of 2.9).
* Mixing: a combiner's ``mix_logits`` is applied shard by shard when it is *vocab-local*
  (``mix(z)[..., S] == mix(z[..., S])`` for every column subset ``S``), true of every linear combiner
  (``logit_average``, ``weighted``: ``α z_θ + (1 − α) z_ref`` is elementwise). A combiner that is not (e.g. one
  that normalises or gates with a full-vocabulary statistic) is detected by :func:`is_vocab_local` (a numeric probe
  on random logits split at an uneven column), and the backend's ``vocab_mix`` setting decides:
  ``auto`` gathers the vocabulary for that combiner (correct, costs ``[tokens, V]`` per chunk on every TP rank),
  ``shard`` refuses it with a :class:`BackendError`, ``gather`` always gathers.
* Padded vocabulary rows (megatron needs ``V`` divisible by TP) get logit ``−1e30`` *after* mixing, so they carry
  no probability and no gradient.

Every function takes tokens flattened to ``[T, V/TP]`` (only the positions that are scored) and returns ``[T]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "VocabMix",
    "entropy",
    "is_vocab_local",
    "log_probs",
    "mask_padding",
    "ref_log_probs",
    "token_stats",
]

VocabMix = Literal["auto", "shard", "gather"]

#: logit given to padded vocabulary rows (finite, so 0·z stays 0 in the entropy).
PAD_LOGIT = -1e30


def _tp() -> tuple[Any, int, int]:
    from megatron.core import parallel_state as ps

    return (
        ps.get_tensor_model_parallel_group(),
        ps.get_tensor_model_parallel_world_size(),
        ps.get_tensor_model_parallel_rank(),
    )


def log_probs(z: Tensor, target: Tensor) -> Tensor:
    """``log softmax(z)[target]`` over the TP-split vocabulary.

    Args:
        z: this rank's logits shard. Shape: ``[T, V/TP]``.
        target: global token ids. Shape: ``[T]``.

    Returns:
        ``[T]`` float32 log-probs (differentiable in ``z``).
    """
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    return -vocab_parallel_cross_entropy(z.float().clone().contiguous(), target)  # [T]


class _VocabParallelEntropy(torch.autograd.Function):
    """``H = log Z − Σ π z`` of TP-split logits; backward ``−π (z − Σ π z)`` is rank-local."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, group: Any) -> Tensor:
        z = z.float()  # [T, V/TP]
        m = z.max(dim=-1, keepdim=True).values  # [T, 1]
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        e = (z - m).exp()  # [T, V/TP]
        s = e.sum(dim=-1, keepdim=True)  # [T, 1]
        dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
        log_z = m + s.log()  # [T, 1]
        pz = (e * z).sum(dim=-1, keepdim=True) / s  # [T, 1] this shard's part of Σ π z
        dist.all_reduce(pz, op=dist.ReduceOp.SUM, group=group)
        ctx.save_for_backward(z, log_z, pz)
        return (log_z - pz).squeeze(-1)  # [T]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        z, log_z, pz = ctx.saved_tensors
        p = (z - log_z).exp()  # [T, V/TP]
        return -p * (z - pz) * grad.unsqueeze(-1), None  # [T, V/TP]


def entropy(z: Tensor) -> Tensor:
    """Entropy of ``softmax(z)`` over the TP-split vocabulary.

    Args:
        z: this rank's logits shard. Shape: ``[T, V/TP]``.

    Returns:
        ``[T]`` float32 entropies, with the correct gradient on every shard.
    """
    group, _, _ = _tp()
    return _VocabParallelEntropy.apply(z, group)  # [T]


def mask_padding(z: Tensor, vocab_size: int, *, shard_start: int) -> Tensor:
    """Set the logits of padded vocabulary rows (global index ≥ ``vocab_size``) to :data:`PAD_LOGIT`."""
    valid = vocab_size - shard_start
    if valid >= z.shape[-1]:
        return z
    cols = torch.arange(z.shape[-1], device=z.device)  # [V/TP]
    return z.masked_fill(cols >= valid, PAD_LOGIT)  # [T, V/TP]


def is_vocab_local(mix: Callable[[Tensor, Sequence[Tensor]], Tensor], num_refs: int) -> bool:
    """Whether ``mix`` can be applied shard by shard: ``mix(z)[..., S] == mix(z[..., S])`` on random logits."""
    g = torch.Generator().manual_seed(1234)
    v = 11
    z = torch.randn(3, v, generator=g, dtype=torch.float64) * 3.0  # [3, V]
    refs = [torch.randn(3, v, generator=g, dtype=torch.float64) * 3.0 for _ in range(num_refs)]  # K × [3, V]
    with torch.no_grad():
        full = mix(z, refs)  # [3, V]
        parts = [mix(z[:, s], [r[:, s] for r in refs]) for s in (slice(0, 4), slice(4, v))]
    return bool(torch.allclose(full, torch.cat(parts, dim=-1), rtol=1e-9, atol=1e-9))


def token_stats(
    z_policy: Tensor,
    z_refs: Sequence[Tensor],
    target: Tensor,
    *,
    mix: Callable[[Tensor, Sequence[Tensor]], Tensor] | None,
    temperature: float,
    vocab_size: int,
    want_entropy: bool,
    gather: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-prob and entropy of ``softmax(mix(z_θ, z_refs) / T)`` from TP-split logits.

    Args:
        z_policy: this rank's policy logits shard. Shape: ``[T, V/TP]``.
        z_refs: the references' logits shards, each ``[T, V/TP]`` (constants).
        target: global token ids. Shape: ``[T]``.
        mix: the combiner's ``mix_logits`` with the step bound; None scores the policy alone.
        temperature: applied after mixing.
        vocab_size: the true vocabulary (columns past it are padding).
        want_entropy: also return the entropy (with gradient).
        gather: gather the vocabulary first (for a ``mix`` that is not vocab-local).

    Returns:
        ``(logp [T], entropy [T] | None)`` float32.
    """
    _, tp, rank = _tp()
    if gather and tp > 1:
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        gathered = gather_from_tensor_model_parallel_region(z_policy)  # [T, V_pad] (backward: split)
        z_policy = gathered[..., :vocab_size]  # [T, V]
        z_refs = [
            gather_from_tensor_model_parallel_region(z.detach())[..., :vocab_size] for z in z_refs
        ]  # K×[T, V]
        z = z_policy if mix is None else mix(z_policy, z_refs)  # [T, V]
        z = z.float() / temperature  # [T, V]
        lse = torch.logsumexp(z, dim=-1)  # [T]
        logp = z.gather(-1, target[:, None]).squeeze(-1) - lse  # [T]
        if not want_entropy:
            return logp, None
        logq = z - lse[:, None]  # [T, V]
        return logp, -(logq.exp() * logq).sum(-1)  # [T], [T]
    z = z_policy if mix is None else mix(z_policy, [r.detach() for r in z_refs])  # [T, V/TP]
    z = mask_padding(z.float() / temperature, vocab_size, shard_start=rank * z.shape[-1])  # [T, V/TP]
    return log_probs(z, target), (entropy(z) if want_entropy else None)  # [T], [T]


def ref_log_probs(z_ref: Tensor, target: Tensor, *, temperature: float, vocab_size: int) -> Tensor:
    """``log softmax(z_ref / T)[target]`` of a reference's TP-split logits, without gradient. Shape: ``[T]``."""
    _, _, rank = _tp()
    with torch.no_grad():
        start = rank * z_ref.shape[-1]
        z = mask_padding(z_ref.float() / temperature, vocab_size, shard_start=start)  # [T, V/TP]
        return log_probs(z, target)  # [T]
