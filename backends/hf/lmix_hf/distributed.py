"""Data parallelism under ``torchrun``: process-group set-up and collectives on scalars and metrics.

Gradient averaging is torch's (DDP or FSDP2, :mod:`lmix_hf.parallel`). The process group is created when
``WORLD_SIZE > 1`` (or when FSDP needs one for a single process) and none exists yet: gloo on CPU, NCCL on CUDA,
with a timeout so a rank that dies does not hang the others forever.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import Tensor

from lmix_core.errors import BackendError


@attrs.frozen(kw_only=True)
class Topology:
    """Where this process sits.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of ranks.
        local_rank: rank on this node (selects the CUDA device).
        device: the device this rank computes on.
        owns_group: whether this backend created the process group (and destroys it in ``close``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(
    *, device: str, timeout_s: float, group_of_one: bool = False, cpu_collectives: bool = False
) -> Topology:
    """Read ``torchrun``'s environment, pick the device and join (or create) the process group.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        timeout_s: collective timeout in seconds.
        group_of_one: create a one-process group when not under torchrun (FSDP needs a group).
        cpu_collectives: on CUDA, also give the group a gloo backend for CPU tensors (``cpu:gloo,cuda:nccl``):
            FSDP's CPU offload keeps gradient shards in host memory, and clipping all-reduces their norms there.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise BackendError("backend.device = 'cuda' but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size <= 1 and not group_of_one:
        return Topology(device=dev)
    owns = False
    if not dist.is_initialized():
        alone: dict[str, Any] = (
            {} if "MASTER_ADDR" in os.environ else {"store": dist.HashStore(), "rank": 0, "world_size": 1}
        )
        dist.init_process_group(
            backend=("cpu:gloo,cuda:nccl" if cpu_collectives else "nccl") if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if use_cuda else None,
            **alone,
        )
        owns = True
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise BackendError(
            f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) disagrees with torchrun's "
            f"environment (RANK={rank}, WORLD_SIZE={world_size})"
        )
    return Topology(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, owns_group=owns)


def mean_over_ranks(values: Mapping[str, float], topology: Topology) -> dict[str, float]:
    """Mean of scalar metrics over the ranks that report each key (ranks may report different keys, or none:
    a rank whose minibatch had no RL rows has no RL metrics). Every rank must call it."""
    if not topology.distributed:
        return dict(values)
    gathered: list[list[str] | None] = [None] * topology.world_size
    dist.all_gather_object(gathered, sorted(values))
    keys = sorted({k for ks in gathered for k in ks or ()})
    if not keys:
        return {}
    t = torch.tensor(
        [float(values.get(k, 0.0)) for k in keys] + [1.0 if k in values else 0.0 for k in keys],
        dtype=torch.float64,
        device=_collective_device(topology),
    )  # [2K]: sums, then how many ranks reported each key
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    n = len(keys)
    return {k: float(t[i]) / max(float(t[n + i]), 1.0) for i, k in enumerate(keys)}


def sum_over_ranks(values: Tensor, topology: Topology) -> Tensor:
    """Elementwise sum over ranks of a tensor of the same shape on every rank; CPU float64 out."""
    t = values.detach().to(device=_collective_device(topology), dtype=torch.float64).clone()
    if topology.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def mean_tensor(value: Tensor, topology: Topology) -> Tensor:
    """Mean of a scalar tensor over ranks (NaN anywhere gives NaN everywhere)."""
    if not topology.distributed:
        return value
    t = value.detach().to(device=_collective_device(topology), dtype=torch.float64).reshape(1)  # [1]
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / topology.world_size).reshape(())


def barrier(topology: Topology) -> None:
    if topology.distributed:
        dist.barrier()


def teardown(topology: Topology) -> None:
    if topology.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device(topology: Topology) -> torch.device:
    return topology.device if topology.device.type == "cuda" else torch.device("cpu")
