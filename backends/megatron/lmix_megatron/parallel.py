"""Process groups: torch.distributed start-up, megatron's ``parallel_state``, and small collectives.

Rank layout (megatron's default order ``tp-cp-ep-dp-pp``): global rank ``r = tp_rank + TP·(dp_rank + DP·pp_rank)``.
The *model-parallel group* of a data-parallel replica holds its ``TP × PP`` ranks; its *leader* is the lowest
global rank in it (TP rank 0 of the first stage). The leader holds the HF copy used for sampling and is the source
of every batch its peers forward, so ranks of one replica always agree on their inputs.

Every process group is created with the configured timeout, so a rank that dies or hangs ends its peers'
collectives with an error instead of a hang; under ``torchrun`` the first failing rank ends the job (the agent
stops the other workers and reports the failing rank's error).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lmix_core.errors import BackendError

__all__ = [
    "Topology",
    "broadcast_object",
    "device",
    "init_distributed",
    "init_model_parallel",
]


def device() -> torch.device:
    """The device this rank computes on: its CUDA device, or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(*, timeout_s: float) -> bool:
    """Start the default process group if nobody has (NCCL on GPU, gloo on CPU).

    Under ``torchrun`` the ``RANK``/``WORLD_SIZE``/``MASTER_*`` variables are used; a plain ``python`` process
    gets a one-rank group on a free local port (megatron always needs one).

    Returns:
        True when this call created the group (the caller then owns its destruction).
    """
    if dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=timeout_s)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://127.0.0.1:{_free_port()}",
            rank=0,
            world_size=1,
            timeout=timeout,
        )
    return True


def init_model_parallel(*, tp: int, pp: int, timeout_s: float) -> None:
    """Set up megatron's ``parallel_state`` for ``tp × pp`` (DP is what is left of the world)."""
    from megatron.core import parallel_state

    world = dist.get_world_size()
    if world % (tp * pp):
        raise BackendError(
            f"the world size ({world} processes) must be a multiple of tp·pp = {tp}·{pp} = {tp * pp}; "
            f"launch with torchrun --nproc_per_node {tp * pp} (or a multiple of it)"
        )
    if parallel_state.model_parallel_is_initialized():
        have = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
        )
        if have != (tp, pp):
            raise BackendError(
                f"megatron is already initialised with tp={have[0]}, pp={have[1]} in this process "
                f"(asked for tp={tp}, pp={pp}); one layout per process"
            )
        return
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        distributed_timeout_minutes=timeout_s
        / 60.0,  # megatron builds timedelta(minutes=...); a float is exact
    )


class Topology:
    """This rank's place in the TP × PP × DP grid, read from ``parallel_state``."""

    def __init__(self) -> None:
        from megatron.core import parallel_state as ps

        self.ps = ps
        self.tp = ps.get_tensor_model_parallel_world_size()
        self.pp = ps.get_pipeline_model_parallel_world_size()
        self.dp = ps.get_data_parallel_world_size()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.pp_rank = ps.get_pipeline_model_parallel_rank()
        self.dp_rank = ps.get_data_parallel_rank()
        self.mp_group = ps.get_model_parallel_group()
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.pp_group = ps.get_pipeline_model_parallel_group()
        self.dp_group = ps.get_data_parallel_group()
        self.mp_ranks = dist.get_process_group_ranks(self.mp_group)
        self.pp_ranks = dist.get_process_group_ranks(self.pp_group)
        self.mp_leader = min(self.mp_ranks)

    @property
    def first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def is_mp_leader(self) -> bool:
        return dist.get_rank() == self.mp_leader

    @property
    def last_stage_rank(self) -> int:
        """Global rank of this rank's pipeline peer on the last stage (same TP rank)."""
        return self.pp_ranks[-1]

    @property
    def first_stage_rank(self) -> int:
        return self.pp_ranks[0]


def broadcast_object(obj: Any, *, src: int, group: Any) -> Any:
    """``obj`` from global rank ``src`` to every rank of ``group`` (pickled; CPU tensors stay on CPU)."""
    if dist.get_world_size(group) == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(
        box, src=src, group=group, device=device() if torch.cuda.is_available() else None
    )
    return box[0]
