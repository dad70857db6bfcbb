"""The HF backend's resumable state on disk.

Layout of a checkpoint directory (written into the empty directory the loop provides; the loop renames it into
place, which makes the checkpoint atomic):

    backend.json        format version, world size, optimiser-state count, dtype, policy source, sharded or not
    model.pt            the policy's ``state_dict`` (exact tensors, tied weights shared)
    optimizer_<k>.pt    AdamW state ``k`` (moments and step counts)
    rng_rank<r>.pt      torch CPU (and CUDA) generator state of rank ``r``

Under FSDP (``parallel = "fsdp"``) ``model.pt`` and ``optimizer_<k>.pt`` are replaced by ``sharded/``, one
``torch.distributed.checkpoint`` (DCP) checkpoint of the model and every optimiser state: each rank writes its own
shards (``__<r>_0.distcp``) and rank 0 the ``.metadata``; no rank ever holds the full state. DCP reshards on load,
so a run may resume on a different number of ranks.

The learning-rate schedule is a function of the step (:mod:`lmix_hf.lr_schedule`), so there is no scheduler state.
Frozen references are not saved: they are reloaded from their directories, which training never changes.
The main rank writes the shared files, every rank its RNG file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lmix_core.errors import BackendError, CheckpointError
from lmix_core.train.checkpoint import read_json, read_torch
from lmix_hf.distributed import Topology, barrier

FORMAT = 1


def save(
    path: Path,
    *,
    topology: Topology,
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    meta: Mapping[str, Any],
    sharded: bool = False,
) -> None:
    """Write the model, optimiser states and this rank's RNG under ``path`` (``sharded``: ``model`` is an FSDP
    root and every rank writes its shards)."""
    path.mkdir(parents=True, exist_ok=True)
    if topology.rank == 0:
        info = {
            "format": FORMAT,
            "world_size": topology.world_size,
            "optimizer_states": len(optimizers),
            "sharded": sharded,
            **meta,
        }
        (path / "backend.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        if not sharded:
            torch.save(model.state_dict(), path / "model.pt")
            for k, opt in enumerate(optimizers):
                torch.save(opt.state_dict(), path / f"optimizer_{k}.pt")
    if sharded:
        import torch.distributed.checkpoint as dcp

        dcp.save(_sharded_state(model, optimizers), checkpoint_id=path / "sharded")
    torch.save(_rng_state(topology), path / f"rng_rank{topology.rank}.pt")
    barrier(topology)


def load(
    path: Path,
    *,
    topology: Topology,
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    meta: Mapping[str, Any],
    sharded: bool = False,
) -> None:
    """Restore what :func:`save` wrote (with the same ``sharded``).

    Raises BackendError when the checkpoint does not fit this backend (format, optimiser-state count, dtype) and
    CheckpointError, naming the file, when a file is missing, corrupt, or holds anything but tensors and plain values.
    """
    info_file = path / "backend.json"
    if not info_file.is_file():
        raise BackendError(f"{str(path)!r} is not an HF-backend checkpoint (no backend.json)")
    info = read_json(info_file)
    if not isinstance(info, dict):
        raise CheckpointError(
            f"cannot read {str(info_file)!r}: it holds a {type(info).__name__}, not an object"
        )
    if info.get("format") != FORMAT:
        raise BackendError(
            f"checkpoint {str(path)!r} has format {info.get('format')!r}; this backend reads {FORMAT}"
        )
    if info.get("optimizer_states") != len(optimizers):
        raise BackendError(
            f"checkpoint {str(path)!r} holds {info.get('optimizer_states')} optimiser state(s) but the run uses "
            f"{len(optimizers)} (the mixer's num_optimizer_states changed)"
        )
    for key, value in meta.items():
        if info.get(key) != value:
            raise BackendError(
                f"checkpoint {str(path)!r} was written with {key}={info.get(key)!r}, not {value!r}"
            )
    if bool(info.get("sharded", False)) != sharded:
        written, now = ("fsdp", "ddp") if info.get("sharded") else ("ddp", "fsdp")
        raise BackendError(
            f"checkpoint {str(path)!r} was written with backend.parallel = {written!r}, not {now!r}"
        )
    if sharded:
        _load_sharded(path / "sharded", model, optimizers)
    else:
        device = next(model.parameters()).device
        model_file = path / "model.pt"
        _restore(model_file, model.load_state_dict, read_torch(model_file, map_location=device))
        for k, opt in enumerate(optimizers):
            opt_file = path / f"optimizer_{k}.pt"
            _restore(opt_file, opt.load_state_dict, read_torch(opt_file, map_location=device))
    rng_file = path / f"rng_rank{topology.rank}.pt"
    if rng_file.is_file():
        _restore(rng_file, lambda state: _set_rng_state(state, topology), read_torch(rng_file))
    barrier(topology)


def _sharded_state(model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> dict[str, Any]:
    """This rank's shards of the model and of every optimiser state, keyed by parameter names (DCP's layout)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {
        "model": get_model_state_dict(model),
        **{f"optimizer_{k}": get_optimizer_state_dict(model, opt) for k, opt in enumerate(optimizers)},
    }


def _load_sharded(
    directory: Path, model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]
) -> None:
    """Read a DCP checkpoint into the model's and optimisers' shards; a missing or damaged one raises
    CheckpointError naming the directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    if not (directory / ".metadata").is_file():
        raise CheckpointError(
            f"cannot read {str(directory)!r}: no DCP .metadata file (incomplete checkpoint)"
        )
    state = _sharded_state(model, optimizers)
    try:
        dcp.load(state, checkpoint_id=directory)
    except Exception as exc:  # DCP wraps every reader failure (missing shard, bad pickle, shape mismatch)
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(f"cannot restore {str(directory)!r}: {type(exc).__name__}: {reason}") from None
    set_model_state_dict(model, state["model"])
    for k, opt in enumerate(optimizers):
        set_optimizer_state_dict(model, opt, state[f"optimizer_{k}"])


def _restore(file: Path, load: Callable[[Any], Any], state: Any) -> None:
    """``load(state)``; a state that does not fit (wrong keys, shapes or types) raises CheckpointError naming ``file``."""
    try:
        load(state)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(
            f"cannot restore {str(file)!r}: {type(exc).__name__}: {reason} (was it written by this run's model and "
            "optimiser?)"
        ) from None


def _rng_state(topology: Topology) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if topology.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(topology.device)
    return state


def _set_rng_state(state: Mapping[str, torch.Tensor], topology: Topology) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and topology.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], topology.device)
