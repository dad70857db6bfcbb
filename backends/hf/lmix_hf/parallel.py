"""Data parallelism through torch's own engines: ``DistributedDataParallel`` or FSDP2 (``fully_shard``).

The backend never calls transformers' ``forward`` of the causal LM: it forwards ``model.base_model`` and applies
the LM head itself, chunk by chunk (:mod:`lmix_hf.token_stats`). DDP's reducer and FSDP's all-gathers fire only
inside the forward of the module they wrap, so the model is held by a :class:`Scope` whose ``forward(fn)`` returns
``fn(lm)``: whatever the scoring code does with the model (hidden states, the head's weight) happens inside the
wrapped forward. :func:`run` calls ``fn`` through the scope (or directly on a plain model).

``ddp``: ``DistributedDataParallel`` over the scope (bucketed all-reduce, overlapped with backward;
:func:`accumulating` skips the all-reduce of every micro-batch chunk but a group's last). Gradients are averaged
over ranks, as before this module existed.

``fsdp``: ``fully_shard`` on every decoder layer (transformers' ``_no_split_modules``) and on the scope (the root:
embeddings, final norm and LM head). Parameters, gradients and AdamW moments are sharded over ranks; a layer's full
weights exist only while it computes (all-gathered in its forward and again in backward, then freed). The gradient
of every chunk is reduce-scattered (averaged) into the sharded gradients: DDP's convention, with no unsharded
gradient kept between chunks. Mixed precision: with ``dtype = bfloat16`` the sharded (master) parameters and AdamW
moments are float32, and layers compute in bfloat16 with float32 gradient reduction (``MixedPrecisionPolicy``);
with ``float32`` everything is float32. ``fsdp_offload`` keeps the sharded parameters, gradients and optimiser
state in host memory (``CPUOffloadPolicy``; CUDA only). ``gradient_checkpointing`` recomputes each layer in
backward, inside FSDP's per-layer all-gather. Frozen references are sharded the same way (no full copy per rank).

Every FSDP forward is a collective, so every rank must run the same number of forwards: the backend pads a rank's
chunks with :func:`dummy_batch` passes (zero loss, every parameter in the graph) up to the most chunks any rank
has (:func:`max_over_ranks`). The sampler decodes token by token with a KV cache; going through FSDP's per-layer
all-gather would all-gather every layer for every token, so for a sampling call :func:`gathered` builds plain
copies with full weights (one per sampled model, in the compute dtype, freed after the call): the sampler's peak
is one full model per sampled model on each rank, the way rollout engines receive FSDP weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._pytree import tree_map

from lmix_core.errors import BackendError
from lmix_core.types import Distribution, TokenBatch
from lmix_hf.distributed import Topology

T = TypeVar("T")

Parallel = Literal["ddp", "fsdp"]


class Scope(nn.Module):
    """Holds a causal LM; ``forward(fn)`` returns ``fn(lm)``: the module DDP and FSDP wrap."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, fn: Callable[[nn.Module], T], /) -> T:
        # FSDP hooks its pre-backward onto the outputs; a view could lose it to a later in-place op, so views
        # (the per-token statistics: a few values per token) leave as copies
        return tree_map(
            lambda t: t.clone() if isinstance(t, torch.Tensor) and t._base is not None else t, fn(self.lm)
        )


def run(model: Any, fn: Callable[[Any], T]) -> T:
    """``fn(lm)`` inside the data-parallel wrapper's forward (its hooks fire), or ``fn(model)`` for a plain model."""
    if isinstance(model, (Scope, nn.parallel.DistributedDataParallel)):
        return model(fn)
    return fn(model)


def is_sharded(model: Any) -> bool:
    """Whether ``model`` is an FSDP2 root built by :func:`wrap`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap(
    lm: nn.Module,
    *,
    parallel: Parallel,
    topology: Topology,
    compute_dtype: torch.dtype,
    offload: bool,
    trainable: bool,
) -> nn.Module:
    """The module the backend forwards ``lm`` through: DDP or FSDP over a :class:`Scope`, or ``lm`` itself.

    Args:
        lm: the causal LM (already on its device).
        parallel: ``ddp`` (replicated; wrapped only under torchrun with several ranks) or ``fsdp`` (always
            wrapped, one rank included).
        topology: this process's place.
        compute_dtype: the dtype layers compute in (FSDP's ``param_dtype``; float32 reduction).
        offload: FSDP's ``CPUOffloadPolicy``.
        trainable: the policy (DDP applies only to it; frozen references stay plain under DDP).
    """
    if parallel == "ddp":
        if not (trainable and topology.distributed):
            return lm
        cuda = topology.device.type == "cuda"
        return nn.parallel.DistributedDataParallel(
            Scope(lm),
            device_ids=[topology.device.index] if cuda else None,
            broadcast_buffers=False,  # no collective in forward: ranks may score different numbers of chunks
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if offload and topology.device.type != "cuda":
        raise BackendError(
            "backend.fsdp_offload needs CUDA (on CPU the parameters are already in host memory)"
        )
    mesh = init_device_mesh(topology.device.type, (dist.get_world_size(),))
    lowered = compute_dtype != next(lm.parameters()).dtype
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if lowered else None
    kwargs: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": mp or MixedPrecisionPolicy(),
        "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy(),
    }
    layers = decoder_layers(lm)
    if not layers:
        raise BackendError(
            f"cannot shard {type(lm).__name__}: no decoder layer found (transformers' _no_split_modules is "
            f"{getattr(lm, '_no_split_modules', None)!r})"
        )
    for layer in layers:
        fully_shard(layer, **kwargs)
    root = Scope(lm)
    fully_shard(root, **kwargs)  # in place: root's class becomes an FSDPModule subclass of Scope
    return root


def decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The modules transformers never splits across devices (its decoder layers)."""
    names = set(getattr(lm, "_no_split_modules", None) or ())
    return [m for m in lm.modules() if type(m).__name__ in names]


def unwrap(model: Any) -> Any:
    """The causal LM inside a wrapper made by :func:`wrap` (the model itself when plain)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model.lm if isinstance(model, Scope) else model


@contextlib.contextmanager
def accumulating(model: Any, *, sync: bool) -> Iterator[None]:
    """DDP: skip the gradient all-reduce of this chunk's backward unless ``sync`` (a group's last chunk).
    FSDP reduce-scatters every chunk (no unsharded gradient is kept between chunks); plain models do nothing."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
    else:
        yield


@contextlib.contextmanager
def head_gathered(models: Sequence[Any]) -> Iterator[None]:
    """Frozen FSDP references: keep the root's parameters (embeddings, norm, LM head) gathered while the scoring
    code reads the head's weight outside the reference's forward; resharded (freed) on exit."""
    sharded = list({id(m): m for m in models if is_sharded(m)}.values())
    for m in sharded:
        m.unshard()
    try:
        yield
    finally:
        for m in sharded:
            m.reshard()


def max_over_ranks(counts: Sequence[int], topology: Topology) -> list[int]:
    """Elementwise maximum of ``counts`` over ranks (every rank must call it)."""
    if not topology.distributed:
        return list(counts)
    device = topology.device if topology.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor(list(counts), dtype=torch.int64, device=device)  # [K]
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(x) for x in t.tolist()]


def dummy_batch(pad_id: int, distribution: Distribution) -> TokenBatch:
    """One row of two real tokens, the second scored: a pass that runs every collective of a real chunk and
    whose zero-weighted loss puts every parameter in the graph (zero gradient)."""
    ids = torch.full((1, 2), pad_id, dtype=torch.long)  # [1, 2]
    return TokenBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        loss_mask=torch.tensor([[0, 1]]),
        distribution=distribution,
    )


def full_state(model: Any, *, rank0_only: bool) -> dict[str, torch.Tensor]:
    """The full (unsharded) ``state_dict`` of the LM inside an FSDP root (transformers' names); every rank must
    call it. ``rank0_only``: on CPU on rank 0, an empty dict elsewhere; otherwise on every rank, on its device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    state = get_model_state_dict(model, options=options)
    return {k.removeprefix("lm."): cast(torch.Tensor, v) for k, v in state.items()}  # a module's: all tensors


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a plain tensor is returned as is)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def gathered(model: Any, *, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A plain copy of the LM inside an FSDP root with full weights in ``dtype`` on ``device`` (eval mode, no
    gradient); every rank must call it. Parameters are all-gathered one tensor at a time into the copy."""
    from torch.distributed.tensor import DTensor

    lm = unwrap(model)
    state = {
        name: (p.full_tensor() if isinstance(p, DTensor) else p.detach()).to(device=device, dtype=dtype)
        for name, p in lm.named_parameters()
    }
    return plain_copy(lm, state, device=device).requires_grad_(False).eval()


def plain_copy(lm: Any, state: dict[str, torch.Tensor], *, device: torch.device) -> Any:
    """A transformers model of ``lm``'s class and config holding ``state``'s tensors (no copy) and ``lm``'s
    buffers (moved to ``device``); built on the meta device, so nothing is initialised twice."""
    with torch.device("meta"):
        plain = type(lm)(lm.config)
    plain.load_state_dict(state, strict=False, assign=True)
    plain.tie_weights()
    for name, b in lm.named_buffers():  # not sharded; rotary tables are not in the state dict
        owner, _, leaf = name.rpartition(".")
        plain.get_submodule(owner)._buffers[leaf] = b.to(device)
    left = [n for n, t in (*plain.named_parameters(), *plain.named_buffers()) if t.is_meta]
    if left:
        raise BackendError(f"building a plain {type(lm).__name__} left tensors without data: {left[:5]}")
    plain.generation_config = lm.generation_config
    return plain
