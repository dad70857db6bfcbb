r"""Log-probs and entropy of a combined next-token distribution, chunked over tokens.

For token ``i`` with policy hidden state ``h_i`` and reference hidden states ``h_{k,i}``::

    z_θ   = h_i · W_θᵀ                         z_k = h_{k,i} · W_kᵀ            (lm-head logits, [V])
    z_mix = mix(z_θ, [sg(z_1), …, sg(z_K)])    (the combiner's ``mix_logits``; ``mix=None`` means z_θ)
    log π(a_i) = z_mix[a_i]/T − logsumexp(z_mix/T)
    H_i = −Σ_v π(v) log π(v) = logsumexp(z_mix/T) − Σ_v π(v) z_mix[v]/T

The naive formula builds ``[N, V]`` logits for every head plus several ``[N, V]`` temporaries and keeps them
for backward. :func:`mixed_token_stats` instead loops over chunks of ``chunk_size`` tokens, so at most one chunk
of ``[chunk, V]`` logits (and a few same-sized temporaries) is alive at any time, in the forward pass and in the
backward pass, which recomputes each chunk's logits (a custom :class:`torch.autograd.Function`). Gradients flow into
``h_policy`` and ``w_policy`` only; the references are constants.

The backward pass's recomputation costs two extra ``[chunk, H] × [H, V]`` matmuls per chunk (one per head) over the
naive formula. When the per-token upstream gradient can be computed inside the chunk loop, because the loss is a sum
of per-token terms of ``(log π, H)``, :func:`mixed_token_loss` computes the gradient during the forward pass
(Liger-style "gradient in forward") and needs no recomputation: the same four matmuls as the naive formula.

Where the logits are small (``N·V`` below :data:`PLAIN_BYTES`, or :data:`PLAIN_ENTROPY_BYTES` with the entropy) and
no ``chunk_size`` is given, :func:`mixed_token_stats` takes the plain formula instead (:func:`reference_token_stats`:
full ``[N, V]`` logits, plain autograd, no recomputation), which measured faster there (:func:`takes_plain_path`).

Gradient of one token's statistics with respect to the (tempered) combined logits ``z = z_mix/T``::

    ∂ log π(a)/∂z = e_a − π                 ∂H/∂z = −π ⊙ (log π + H)

and the chain rule through ``mix`` is taken by autograd on the chunk, so any row-wise ``mix`` works.

Peers: TRL 1.16 ``trl.kernels.chunked_logprob.ChunkedLogProbFunction`` does this for a single head (token tiles of
4096 × vocabulary tiles of 32768 with an online logsumexp, recomputing in backward); no peer fuses the two-head
mixed case. Limitations: no lm-head bias, logit scale or soft-capping (models with those need a ``mix`` that applies
them); bf16/fp16 weights compute the logits in their dtype and upcast each chunk to fp32, and the gradients
accumulate in fp32 (float64 inputs keep float64 throughout).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lmix_core.errors import BackendError

#: ``mix(z_policy [c, V], z_refs: K × [c, V]) -> [c, V]``: a combiner's ``mix_logits`` with the step bound.
Mix = Callable[[Tensor, Sequence[Tensor]], Tensor]
#: ``token_loss(logp [c], entropy [c] | None, rows) -> [c]`` (or a scalar): loss terms of the tokens ``rows``.
TokenLoss = Callable[[Tensor, "Tensor | None", slice], Tensor]

#: Target size in bytes of one ``[chunk, V]`` fp32 buffer when ``chunk_size`` is None (see :func:`auto_chunk_size`).
CHUNK_BYTES = 64 * 2**20
#: With ``chunk_size=None``, statistics without entropy whose ``[N, V]`` fp32 logits (per head) fit in this many
#: bytes take the plain path (:func:`reference_token_stats`).
PLAIN_BYTES = CHUNK_BYTES
#: The same bound when the entropy is asked for (the chunked path wins above it; see :func:`takes_plain_path`).
PLAIN_ENTROPY_BYTES = 16 * 2**20


class MixedTokenStats(NamedTuple):
    """Per-token statistics of the combined distribution, float32 (float64 for float64 inputs).

    Attributes:
        logp: ``[N]`` log-prob of each target token.
        entropy: ``[N]`` entropy of each position's distribution, or None when not asked for.
    """

    logp: Tensor
    entropy: Tensor | None


class MixedTokenLoss(NamedTuple):
    """What :func:`mixed_token_loss` returns.

    Attributes:
        loss: 0-dim, the sum of every chunk's ``token_loss``; differentiable (once) in ``h_policy, w_policy``.
        logp: ``[N]`` detached log-probs (for metrics).
        entropy: ``[N]`` detached entropies, or None.
    """

    loss: Tensor
    logp: Tensor
    entropy: Tensor | None


def geometric_mix(
    z_policy: Tensor, z_refs: Sequence[Tensor], *, alpha: float, ref_weights: Sequence[float]
) -> Tensor:
    r"""Normalised geometric mixture logits ``α·z_θ + (1 − α)·Σ_k w_k·sg(z_k)``.

    ``softmax`` of the result is ``π_θ^α · Π_k π_k^{(1−α) w_k} / Z``; each model's log-partition is a per-row
    constant, which the softmax ignores. A term whose coefficient is 0 is dropped rather than multiplied by 0, so
    ``−inf`` (masked) logits never produce ``0·∞ = NaN``; the policy's term keeps its autograd edge (with a zero
    gradient) even when ``α = 0``.

    Args:
        z_policy: trainable logits. Shape: ``[..., V]``.
        z_refs: reference logits, each ``[..., V]``; detached here.
        alpha: the policy's weight α ∈ [0, 1].
        ref_weights: ``w_k`` on the simplex, one per reference.

    Returns:
        ``[..., V]`` combined logits in ``z_policy``'s dtype.
    """
    if alpha != 0.0:
        z_mix = z_policy * alpha  # [..., V]
    else:
        z_mix = (z_policy * 0.0).nan_to_num(nan=0.0)  # [..., V] zeros that keep the graph
    for w_k, z_k in zip(ref_weights, z_refs, strict=True):
        coef = (1.0 - alpha) * w_k
        if coef != 0.0:
            # in place: z_mix is this function's own intermediate, which no backward formula reads
            z_mix = z_mix.add_(z_k.detach().to(z_policy.dtype), alpha=coef)  # [..., V]
    return z_mix


def check_reference_logits(name: str, z_policy: Tensor, z_refs: Sequence[Tensor], expected: int) -> None:
    """Raise :class:`BackendError` unless ``z_refs`` holds ``expected`` tensors shaped like ``z_policy``.

    Args:
        name: the combiner's registered name, for the message.
        z_policy: the policy's logits. Shape: ``[..., V]``.
        z_refs: the reference logits a backend passed to ``mix_logits``.
        expected: the combiner's ``num_references``.
    """
    if len(z_refs) != expected:
        raise BackendError(
            f"combiner {name!r} takes {expected} reference logits tensor{'s' if expected != 1 else ''} "
            f"(got {len(z_refs)}); the backend must load Combiner.num_references frozen references"
        )
    for k, z_ref in enumerate(z_refs):
        if z_ref.shape != z_policy.shape:
            raise BackendError(
                f"combiner {name!r}: reference {k} logits have shape {tuple(z_ref.shape)}, the policy's "
                f"{tuple(z_policy.shape)}; the reference must share the policy's tokenizer and vocabulary"
            )


def auto_chunk_size(vocab: int, *, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk so that one ``[chunk, vocab]`` fp32 buffer takes about ``chunk_bytes`` (at least 8)."""
    return max(8, chunk_bytes // (4 * vocab))


def takes_plain_path(n: int, vocab: int, heads: int, entropy: bool) -> bool:
    """Whether :func:`mixed_token_stats` with ``chunk_size=None`` uses :func:`reference_token_stats`.

    Measured on one CPU thread (hidden size 256, forward + backward, the policy alone): with the log-probs alone the plain path took 0.76–0.94× the
    chunked path's time at every size tried (``N`` 512–2048, ``V`` 2k–152k), because the chunked backward recomputes
    the logits; with the entropy as well it took 0.86× at ``N·V`` = 1M, 1.02× at 3.7M, 1.08–1.19× from 17M up. Both
    bounds also cap the memory the plain path keeps for backward (about one ``[N, V]`` fp32 tensor per head).

    Args:
        n: tokens. vocab: vocabulary size. heads: lm heads whose logits are built (1 + references).
        entropy: whether the entropy is computed.
    """
    limit = PLAIN_ENTROPY_BYTES if entropy else PLAIN_BYTES
    return 4 * n * vocab * heads <= limit


def _full_log_softmax(
    h_policy: Tensor,
    w_policy: Tensor,
    h_refs: Sequence[Tensor],
    w_refs: Sequence[Tensor],
    mix: Mix | None,
    temperature: float,
) -> Tensor:
    """``log softmax(mix(z_θ, z_refs) / T)`` from full ``[N, V]`` logits (references detached); each intermediate is
    dropped as soon as autograd no longer needs it."""
    dtype = stat_dtype(w_policy.dtype)
    z = (h_policy @ w_policy.T).to(dtype)  # [N, V]
    if mix is not None:
        z_refs = [
            (h.detach() @ w.detach().T).to(dtype) for h, w in zip(h_refs, w_refs, strict=True)
        ]  # K × [N, V]
        z = mix(z, z_refs)  # [N, V]
        del z_refs
    if temperature != 1.0:
        z = z / temperature  # [N, V]
    return torch.log_softmax(z, dim=-1)  # [N, V]


def reference_token_stats(
    h_policy: Tensor,
    w_policy: Tensor,
    h_refs: Sequence[Tensor],
    w_refs: Sequence[Tensor],
    targets: Tensor,
    mix: Mix | None,
    *,
    temperature: float = 1.0,
    entropy: bool = True,
) -> MixedTokenStats:
    """The naive formula :func:`mixed_token_stats` must reproduce: full ``[N, V]`` logits, plain autograd.

    It materialises every head's full logits (each intermediate is dropped as soon as autograd no longer needs
    it, so this is the lean form of the naive formula). Tests and benchmarks compare against it, and
    :func:`mixed_token_stats` takes it as its plain path where the logits are small; ``−inf`` logits are allowed.
    """
    logq = _full_log_softmax(h_policy, w_policy, h_refs, w_refs, mix, temperature)  # [N, V]
    logp = logq.gather(-1, targets[:, None]).squeeze(-1)  # [N]
    if not entropy:
        return MixedTokenStats(logp, None)
    ent = -(logq.exp() * logq).sum(-1)  # [N]
    if not bool(torch.isfinite(ent).all()):  # −inf logits: π = 0 there, and 0·(−inf) must count as 0
        ent = -(logq.exp() * logq.masked_fill(logq == -math.inf, 0.0)).sum(-1)  # [N]
    return MixedTokenStats(logp, ent)


def mixed_token_stats(
    h_policy: Tensor,
    w_policy: Tensor,
    h_refs: Sequence[Tensor],
    w_refs: Sequence[Tensor],
    targets: Tensor,
    mix: Mix | None,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    entropy: bool = True,
) -> MixedTokenStats:
    """Log-probs (and entropy) of ``softmax(mix(z_θ, z_refs)/T)`` at ``targets``, chunked over tokens.

    Args:
        h_policy: final hidden states of the trainable policy (after the final norm). Shape: ``[N, H]``.
        w_policy: the policy's lm-head weight. Shape: ``[V, H]``.
        h_refs: each reference's final hidden states, ``[N, H_k]``; constants.
        w_refs: each reference's lm-head weight, ``[V, H_k]``; constants.
        targets: int64 token ids to score. Shape: ``[N]``.
        mix: combined logits from the policy's and the references' chunk logits (a combiner's ``mix_logits``
            with ``functools.partial(..., step=step)``); None scores the policy alone and takes no references.
        temperature: the sampling temperature, applied after mixing.
        chunk_size: tokens per chunk; None picks :func:`auto_chunk_size` of ``V``, or the plain full-logits
            formula where :func:`takes_plain_path` (small ``N·V``: faster, and the memory is small anyway).
        entropy: also return the entropy of each position's distribution (with gradient).

    Returns:
        ``logp [N]`` and ``entropy [N]`` (or None), differentiable in ``h_policy`` and ``w_policy``.
    """
    h_refs, w_refs, chunk = _check(h_policy, w_policy, h_refs, w_refs, targets, mix, temperature, chunk_size)
    n, vocab = h_policy.shape[0], w_policy.shape[0]
    if chunk_size is None and takes_plain_path(n, vocab, 1 + len(h_refs), entropy):
        return reference_token_stats(
            h_policy, w_policy, h_refs, w_refs, targets, mix, temperature=temperature, entropy=entropy
        )
    logp, ent = _StatsFunction.apply(
        h_policy, w_policy, targets, h_refs, w_refs, mix, float(temperature), chunk, bool(entropy)
    )
    return MixedTokenStats(logp, ent)


def mixed_token_loss(
    h_policy: Tensor,
    w_policy: Tensor,
    h_refs: Sequence[Tensor],
    w_refs: Sequence[Tensor],
    targets: Tensor,
    mix: Mix | None,
    token_loss: TokenLoss,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    entropy: bool = True,
) -> MixedTokenLoss:
    """A token-separable loss of the combined distribution, its gradient computed inside the chunk loop.

    The loss is ``Σ_chunks Σ token_loss(logp[rows], entropy[rows], rows)``: each chunk's ``token_loss`` may read
    only that chunk's statistics (per-token constants such as advantages, old log-probs and token weights are
    indexed with ``rows``). PPO-clip, PG, KL and entropy terms with precomputed aggregation weights are of this form;
    a sequence-level ratio (GSPO) is not, use :func:`mixed_token_stats` there. Because the per-token upstream
    gradient is known inside the loop, the policy gradient is accumulated during the forward pass and backward only
    scales it: four ``[chunk, H] × [H, V]`` matmuls per chunk instead of six.

    Args:
        h_policy: ``[N, H]`` policy hidden states.
        w_policy: ``[V, H]`` policy lm-head weight.
        h_refs: reference hidden states, each ``[N, H_k]``.
        w_refs: reference lm-head weights, each ``[V, H_k]``.
        targets: ``[N]`` int64 token ids.
        mix: as in :func:`mixed_token_stats`.
        token_loss: ``(logp [c], entropy [c] or None, rows) -> [c]`` loss terms, differentiable in its first two
            arguments; nothing else it touches receives a gradient.
        temperature: sampling temperature, applied after mixing.
        chunk_size: tokens per chunk (None: :func:`auto_chunk_size`).
        entropy: compute the entropy and pass it to ``token_loss``.

    Returns:
        The scalar loss (differentiable once) and the detached per-token statistics.
    """
    h_refs, w_refs, chunk = _check(h_policy, w_policy, h_refs, w_refs, targets, mix, temperature, chunk_size)
    loss, logp, ent = _LossFunction.apply(
        h_policy, w_policy, targets, h_refs, w_refs, mix, token_loss, float(temperature), chunk, bool(entropy)
    )
    return MixedTokenLoss(loss, logp, ent)


# -- checks ------------------------------------------------------------------------------------------------------
def _check(
    h_policy: Tensor,
    w_policy: Tensor,
    h_refs: Sequence[Tensor],
    w_refs: Sequence[Tensor],
    targets: Tensor,
    mix: Mix | None,
    temperature: float,
    chunk_size: int | None,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], int]:
    if h_policy.dim() != 2 or w_policy.dim() != 2 or h_policy.shape[1] != w_policy.shape[1]:
        raise BackendError(
            f"mixed log-probs take h_policy [N, H] and w_policy [V, H] (got {tuple(h_policy.shape)} and "
            f"{tuple(w_policy.shape)})"
        )
    n, vocab = h_policy.shape[0], w_policy.shape[0]
    if len(h_refs) != len(w_refs):
        raise BackendError(
            f"got {len(h_refs)} reference hidden-state tensors but {len(w_refs)} reference lm heads"
        )
    if mix is None and len(h_refs) > 0:
        raise BackendError(f"mix=None scores the policy alone, but {len(h_refs)} references were given")
    for k, (h, w) in enumerate(zip(h_refs, w_refs)):
        if h.dim() != 2 or w.dim() != 2 or h.shape[0] != n or w.shape[0] != vocab or h.shape[1] != w.shape[1]:
            raise BackendError(
                f"reference {k} has hidden states {tuple(h.shape)} and lm head {tuple(w.shape)}; expected "
                f"[{n}, H_k] and [{vocab}, H_k] (the references must share the policy's vocabulary)"
            )
    if targets.shape != (n,) or targets.dtype != torch.long:
        raise BackendError(
            f"targets must be int64 of shape [{n}] (got {targets.dtype} {tuple(targets.shape)})"
        )
    if n > 0 and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise BackendError(
            f"targets must lie in [0, {vocab}) (got {int(targets.min())}..{int(targets.max())})"
        )
    if not temperature > 0:
        raise BackendError(f"temperature must be > 0 (got {temperature!r})")
    if chunk_size is not None and chunk_size < 1:
        raise BackendError(f"chunk_size must be >= 1 (got {chunk_size!r})")
    chunk = auto_chunk_size(vocab) if chunk_size is None else int(chunk_size)
    refs = tuple(h.detach() for h in h_refs), tuple(w.detach() for w in w_refs)
    return refs[0], refs[1], chunk


# -- chunk helpers -----------------------------------------------------------------------------------------------
def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the softmax statistics and gradient accumulators: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Workspace:
    """``[chunk, V]`` buffers reused by every chunk, so the loop does not allocate (and page in) fresh ones."""

    def __init__(self, chunk: int, vocab: int, dtype: torch.dtype, device: torch.device) -> None:
        self.shape, self.dtype, self.device = (chunk, vocab), dtype, device
        self.buffers: dict[str, Tensor] = {}

    def get(self, name: str, rows: int) -> Tensor:
        if name not in self.buffers:
            self.buffers[name] = torch.empty(self.shape, dtype=self.dtype, device=self.device)  # [chunk, V]
        return self.buffers[name][:rows]  # [c, V]

    def spare(self, name: str, fallback: str, rows: int, kept: frozenset[int]) -> Tensor:
        """Buffer ``name`` when it exists and holds none of ``kept`` (storages still read), else ``fallback``."""
        buffer = self.buffers.get(name)
        if buffer is not None and buffer.untyped_storage().data_ptr() not in kept:
            return buffer[:rows]  # [c, V]
        return self.get(fallback, rows)  # [c, V]


def _logits(h: Tensor, w: Tensor, out: Tensor) -> Tensor:
    """Logits of one chunk into the workspace buffer ``out`` (:func:`stat_dtype`). ``[c, H] × [V, H] → [c, V]``."""
    if w.dtype == out.dtype and h.dtype == out.dtype:
        return torch.mm(h, w.t(), out=out)  # [c, V]
    return out.copy_(torch.mm(h, w.t()))  # [c, V] computed in the weights' dtype, upcast


class _Fold(NamedTuple):
    """Softmax statistics of one chunk (see :func:`_fold`)."""

    m: Tensor  # [c, 1] max of the tempered logits
    log_s: Tensor  # [c, 1] log Σ exp(z/T − max)
    logp: Tensor  # [c] log π(target)
    d: Tensor  # [c, V] z/T − max
    p: Tensor  # [c, V] π
    entropy: Tensor | None  # [c]
    guarded: bool  # some logits were ±inf, so products with them were masked


def _fold(z: Tensor, targets: Tensor, want_entropy: bool, temperature: float, d: Tensor, p: Tensor) -> _Fold:
    """Softmax statistics of one chunk of combined logits ``z [c, V]``, written into the buffers ``d`` and ``p``."""
    if temperature != 1.0:
        torch.div(z, temperature, out=d)  # [c, V] z/T
        m = d.amax(-1, keepdim=True)  # [c, 1]
        d.sub_(m)  # [c, V]
    else:
        m = z.amax(-1, keepdim=True)  # [c, 1]
        torch.sub(z, m, out=d)  # [c, V] z − max, ≤ 0
    torch.exp(d, out=p)  # [c, V] unnormalised
    s = p.sum(-1, keepdim=True)  # [c, 1]
    log_s = s.log()  # [c, 1]
    logp = (d.gather(-1, targets[:, None]) - log_s).squeeze(-1)  # [c]
    p.div_(s)  # [c, V] π
    if not want_entropy:
        return _Fold(m, log_s, logp, d, p, None, False)
    pd = torch.bmm(p.unsqueeze(1), d.unsqueeze(2)).view(-1)  # [c] Σ_v π_v (z_v/T − max)
    guarded = not bool(torch.isfinite(pd).all())
    if guarded:  # −inf logits: π_v = 0 there, and 0·(−inf) must count as 0
        pd = (p * d.nan_to_num(neginf=0.0, posinf=0.0)).sum(-1)  # [c]
    ent = log_s.squeeze(-1) - pd  # [c] H = log s − Σ π (z/T − max)
    return _Fold(m, log_s, logp, d, p, ent, guarded)


class _Mixed(NamedTuple):
    """One chunk's logits (see :func:`_mix_chunk`)."""

    z_pol: Tensor  # [c, V] policy logits (with ``track``, an autograd leaf over the workspace buffer)
    z_mix: Tensor  # [c, V] combined logits
    kept: frozenset[int]  # storages that z_mix's autograd graph saved, and z_mix's own: not to be overwritten


def _mix_chunk(
    h_policy: Tensor,
    w_policy: Tensor,
    h_refs: Sequence[Tensor],
    w_refs: Sequence[Tensor],
    mix: Mix | None,
    rows: slice,
    track: bool,
    ws: _Workspace,
) -> _Mixed:
    """The logits of one chunk; with ``track`` the policy logits are an autograd leaf of ``z_mix``.

    ``kept`` lets the backward pass write into the workspace buffers of the policy's and the references' logits
    once ``z_mix`` is read, where ``mix``'s graph did not save them (a ``mix`` that multiplies by the reference
    logits saves them; :func:`geometric_mix` saves nothing).
    """
    c = rows.stop - rows.start
    with torch.no_grad():
        z_pol = _logits(h_policy[rows], w_policy, ws.get("policy", c))  # [c, V]
        if mix is None:
            return _Mixed(z_pol, z_pol, frozenset())
        z_refs = [_logits(h[rows], w, ws.get(f"ref{k}", c)) for k, (h, w) in enumerate(zip(h_refs, w_refs))]
    if track:
        z_pol = z_pol.detach().requires_grad_(True)  # [c, V] leaf over the workspace buffer
    saved: set[int] = set()

    def pack(t: Tensor) -> Tensor:
        saved.add(t.untyped_storage().data_ptr())
        return t

    with torch.set_grad_enabled(track), torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        z_mix = mix(z_pol, z_refs)  # [c, V]
    return _Mixed(z_pol, z_mix, frozenset({*saved, z_mix.untyped_storage().data_ptr()}))


def _unpack(t: Tensor) -> Tensor:
    return t


def _policy_grad(z_mix: Tensor, z_pol: Tensor, dz: Tensor) -> Tensor | None:
    """Chain ``dz`` (w.r.t. the combined logits) through ``mix`` to the policy logits; None when it is cut."""
    if z_mix is z_pol:
        return dz
    if not z_mix.requires_grad:
        return None
    (dz_pol,) = torch.autograd.grad(z_mix, z_pol, dz, allow_unused=True)
    return dz_pol


def _chunk_grad(
    z_pol: Tensor,
    z_mix: Tensor,
    logq: Tensor,
    p: Tensor,
    targets: Tensor,
    ent: Tensor | None,
    g_logp: Tensor | None,
    g_ent: Tensor | None,
    temperature: float,
    guarded: bool,
) -> Tensor | None:
    """One chunk's gradient w.r.t. its policy logits ``[c, V]``; None when ``mix`` cuts the policy off.

    Shared by the generic backward and the fused forward. ``logq = log π`` and ``p = π`` of the chunk (``[c, V]``,
    overwritten: the gradient w.r.t. the untempered combined logits is built in place in one of them), ``g_logp``
    and ``g_ent`` the ``[c]`` upstream gradients::

        ∂/∂z = (g·(e_a − π) − g_H·π ⊙ (log π + H)) / T

    then chained through ``mix`` to ``z_pol`` (:func:`_policy_grad`).
    """
    if g_ent is not None and ent is not None:
        if guarded:
            logq.nan_to_num_(neginf=0.0, posinf=0.0)  # [c, V] where π = 0 the product below is 0 anyway
        dz = logq.add_(ent[:, None]).mul_(g_ent[:, None])  # [c, V] g_H·(log π + H)
        if g_logp is not None:
            dz.add_(g_logp[:, None])  # [c, V]
        dz.mul_(p).neg_()  # [c, V]
    elif g_logp is not None:
        dz = p.mul_(-g_logp[:, None])  # [c, V]
    else:
        return _policy_grad(z_mix, z_pol, p.zero_())  # [c, V] no upstream gradient
    if g_logp is not None:
        dz.scatter_add_(-1, targets[:, None], g_logp[:, None].to(dz.dtype))  # [c, V] + g at the target
    if temperature != 1.0:
        dz.div_(temperature)  # [c, V]
    return _policy_grad(z_mix, z_pol, dz)  # [c, V]


class _Outputs:
    """The per-token outputs ``logp [N]`` and ``entropy [N]`` (or None), in :func:`stat_dtype`, filled by chunk."""

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device, want_entropy: bool) -> None:
        self.logp = torch.zeros(n, dtype=dtype, device=device)  # [N]
        self.entropy = torch.zeros(n, dtype=dtype, device=device) if want_entropy else None  # [N]

    def store(self, rows: slice, f: _Fold) -> None:
        """Write one chunk's statistics."""
        self.logp[rows] = f.logp
        if self.entropy is not None and f.entropy is not None:
            self.entropy[rows] = f.entropy


class _Grads:
    """Gradient accumulators for ``h`` and ``W`` in :func:`stat_dtype`.

    ``grad_W`` starts uninitialised and the first contributing chunk writes it (``out=``), which spares a
    ``[V, H]`` zero fill; :meth:`weight` zero-fills it only if no chunk contributed.
    """

    def __init__(self, h: Tensor, w: Tensor, need_h: bool, need_w: bool) -> None:
        dtype = stat_dtype(w.dtype)
        self.h = torch.zeros(h.shape, dtype=dtype, device=h.device) if need_h else None  # [N, H]
        self.w = torch.empty(w.shape, dtype=dtype, device=w.device) if need_w else None  # [V, H]
        self.w_written = False

    def add(self, dz_pol: Tensor | None, h_c: Tensor, w: Tensor, rows: slice) -> None:
        """``grad_h[rows] = dz·W`` and ``grad_W += dzᵀ·h`` for one chunk (nothing for None, a cut ``mix``).

        Shapes: ``dz_pol [c, V]``, ``h_c [c, H]``.
        """
        if dz_pol is None:
            return
        if self.h is not None:
            if w.dtype == self.h.dtype:
                torch.mm(dz_pol, w, out=self.h[rows])  # [c, H]
            else:
                self.h[rows] = torch.mm(dz_pol.to(w.dtype), w).to(self.h.dtype)  # [c, H]
        if self.w is not None:
            h_c = h_c.to(self.w.dtype)  # [c, H]
            if self.w_written:
                self.w.addmm_(dz_pol.t(), h_c)  # [V, H]
            else:
                torch.mm(dz_pol.t(), h_c, out=self.w)  # [V, H]
                self.w_written = True

    def hidden(self) -> Tensor | None:
        return self.h

    def weight(self) -> Tensor | None:
        if self.w is not None and not self.w_written:
            self.w.zero_()  # [V, H] no chunk reached the policy
        return self.w


def _workspace(h_policy: Tensor, w_policy: Tensor, chunk_size: int) -> _Workspace:
    """Buffers for chunks of at most ``chunk_size`` rows (fewer when there are fewer tokens)."""
    rows = max(1, min(chunk_size, h_policy.shape[0]))
    return _Workspace(rows, w_policy.shape[0], stat_dtype(w_policy.dtype), h_policy.device)


# -- autograd functions ------------------------------------------------------------------------------------------
class _StatsFunction(torch.autograd.Function):
    """Forward: chunked statistics; backward: recompute each chunk's logits and chain the gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        h_policy: Tensor,
        w_policy: Tensor,
        targets: Tensor,
        h_refs: tuple[Tensor, ...],
        w_refs: tuple[Tensor, ...],
        mix: Mix | None,
        temperature: float,
        chunk_size: int,
        want_entropy: bool,
    ) -> tuple[Tensor, Tensor | None]:
        ctx.set_materialize_grads(False)
        n, dtype, dev = h_policy.shape[0], stat_dtype(w_policy.dtype), h_policy.device
        out = _Outputs(n, dtype, dev, want_entropy)
        shift = torch.zeros(n, 1, dtype=dtype, device=dev)  # [N, 1] max of z/T
        log_s = torch.zeros(n, 1, dtype=dtype, device=dev)  # [N, 1] log Σ exp(z/T − max)
        guarded: list[bool] = []
        ws = _workspace(h_policy, w_policy, chunk_size)
        for rows in _chunks(n, chunk_size):
            c = rows.stop - rows.start
            z_mix = _mix_chunk(h_policy, w_policy, h_refs, w_refs, mix, rows, False, ws).z_mix  # [c, V]
            # the logits buffers are dead once mixed (nothing differentiates here): reuse them for d and π
            p_buf = ws.get("ref0", c) if h_refs else ws.get("p", c)  # [c, V]
            f = _fold(z_mix, targets[rows], want_entropy, temperature, ws.get("policy", c), p_buf)
            del z_mix
            out.store(rows, f)
            shift[rows], log_s[rows] = f.m, f.log_s
            guarded.append(f.guarded)
            del f
        logp, ent = out.logp, out.entropy
        ctx.save_for_backward(h_policy, w_policy, targets, shift, log_s, ent if ent is not None else logp)
        ctx.refs = (h_refs, w_refs)
        ctx.mix, ctx.temperature, ctx.chunk_size, ctx.guarded = mix, temperature, chunk_size, guarded
        ctx.want_entropy = want_entropy
        if ent is None:
            return logp, None
        return logp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_logp: Tensor | None, g_ent: Tensor | None) -> tuple[Tensor | None, ...]:
        h_policy, w_policy, targets, shift, log_s, ent = ctx.saved_tensors
        ent = ent if ctx.want_entropy else None
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        none = (None,) * 7
        if (g_logp is None and g_ent is None) or not (need_h or need_w):
            return (None, None, *none)
        h_refs, w_refs = ctx.refs
        acc = _Grads(h_policy, w_policy, need_h, need_w)
        g_logp = None if g_logp is None else g_logp.to(log_s.dtype)  # [N]
        g_ent = None if g_ent is None else g_ent.to(log_s.dtype)  # [N]
        temperature = ctx.temperature
        ws = _workspace(h_policy, w_policy, ctx.chunk_size)
        for rows, guard in zip(_chunks(h_policy.shape[0], ctx.chunk_size), ctx.guarded):
            c = rows.stop - rows.start
            z_pol, z_mix, kept = _mix_chunk(h_policy, w_policy, h_refs, w_refs, ctx.mix, rows, True, ws)
            # log π goes into the reference logits' buffer and π into the policy logits' (dead once z_mix is
            # read, unless mix's graph saved them): four [c, V] buffers with z_mix and the gradient, not six
            logq = ws.spare("ref0", "d", c, kept)  # [c, V]
            if temperature != 1.0:
                torch.div(z_mix.detach(), temperature, out=logq)  # [c, V] z/T
                logq.sub_(shift[rows])  # [c, V] z/T − max (exact, as in the forward pass)
            else:
                torch.sub(z_mix.detach(), shift[rows], out=logq)  # [c, V] z − max
            logq.sub_(log_s[rows])  # [c, V] log π
            p = torch.exp(logq, out=ws.spare("policy", "p", c, kept))  # [c, V] π
            dz_pol = _chunk_grad(
                z_pol,
                z_mix,
                logq,
                p,
                targets[rows],
                None if ent is None else ent[rows],
                None if g_logp is None else g_logp[rows],
                None if g_ent is None else g_ent[rows],
                temperature,
                guard,
            )  # [c, V]
            del z_mix, z_pol, logq, p
            acc.add(dz_pol, h_policy[rows], w_policy, rows)
            del dz_pol
        grad_h, grad_w = acc.hidden(), acc.weight()
        return (
            None if grad_h is None else grad_h.to(h_policy.dtype),
            None if grad_w is None else grad_w.to(w_policy.dtype),
            *none,
        )


class _LossFunction(torch.autograd.Function):
    """Forward: chunked statistics, per-token loss and its gradient; backward: scale the stored gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        h_policy: Tensor,
        w_policy: Tensor,
        targets: Tensor,
        h_refs: tuple[Tensor, ...],
        w_refs: tuple[Tensor, ...],
        mix: Mix | None,
        token_loss: TokenLoss,
        temperature: float,
        chunk_size: int,
        want_entropy: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        n, dtype, dev = h_policy.shape[0], stat_dtype(w_policy.dtype), h_policy.device
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        track = need_h or need_w
        out = _Outputs(n, dtype, dev, want_entropy)
        loss = torch.zeros((), dtype=dtype, device=dev)  # []
        acc = _Grads(h_policy, w_policy, need_h, need_w)
        ws = _workspace(h_policy, w_policy, chunk_size)
        for rows in _chunks(n, chunk_size):
            c = rows.stop - rows.start
            z_pol, z_mix, _ = _mix_chunk(h_policy, w_policy, h_refs, w_refs, mix, rows, track, ws)  # [c, V]
            f = _fold(
                z_mix.detach(), targets[rows], want_entropy, temperature, ws.get("d", c), ws.get("p", c)
            )
            out.store(rows, f)
            with torch.enable_grad():
                lp = f.logp.detach().requires_grad_(track)  # [c]
                en = None if f.entropy is None else f.entropy.detach().requires_grad_(track)  # [c]
                ell = token_loss(lp, en, rows).sum()  # []
            loss += ell.detach().to(dtype)
            g_logp = g_ent = None
            if track and ell.requires_grad:
                grads = torch.autograd.grad(ell, [lp] if en is None else [lp, en], allow_unused=True)
                g_logp = None if grads[0] is None else grads[0].to(dtype)  # [c]
                g_ent = None if en is None or grads[1] is None else grads[1].to(dtype)  # [c]
            if g_logp is None and g_ent is None:
                del f, z_mix, z_pol
                continue
            logq = f.d.sub_(f.log_s)  # [c, V] log π
            dz_pol = _chunk_grad(
                z_pol, z_mix, logq, f.p, targets[rows], f.entropy, g_logp, g_ent, temperature, f.guarded
            )  # [c, V]
            del z_mix, z_pol, logq, f
            acc.add(dz_pol, h_policy[rows], w_policy, rows)
            del dz_pol
        ctx.grads = (acc.hidden(), acc.weight())
        ctx.dtypes = (h_policy.dtype, w_policy.dtype)
        logp, ent = out.logp, out.entropy
        ctx.mark_non_differentiable(logp, *(() if ent is None else (ent,)))
        return loss, logp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_loss: Tensor | None, *_: Tensor | None) -> tuple[Tensor | None, ...]:
        grad_h, grad_w = ctx.grads
        ctx.grads = (None, None)
        none = (None,) * 8
        if g_loss is None:
            return (None, None, *none)
        scale = g_loss.to(torch.float64)
        out: list[Tensor | None] = []
        for grad, dtype in zip((grad_h, grad_w), ctx.dtypes):
            if grad is None:
                out.append(None)
                continue
            if not bool(scale == 1.0):
                grad.mul_(scale)
            out.append(grad.to(dtype))
        return (out[0], out[1], *none)
