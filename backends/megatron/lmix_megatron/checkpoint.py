"""Resumable, reshardable checkpoints: megatron ``dist_checkpointing`` of the model and the distributed optimizer.

Layout of a checkpoint directory ``DIR``:

* ``DIR/dist/``: one ``dist_checkpointing`` checkpoint with the model (global tensor shapes) and the distributed
  optimizer in the ``fully_reshardable`` format (model-shaped Adam moments and fp32 main parameters), so a run
  saved at TP2×PP2 resumes at TP1×PP1 or any other layout. The memory-efficient variant is used (gathered over
  gloo on DP rank 0), which also avoids a CUDA-only code path.
* ``DIR/hf/``: the HF config, generation config and tokenizer files (the checkpoint is self-describing, and
  ``lmix convert mcore2hf DIR OUT`` turns it into an HF model).
* ``DIR/lmix_megatron.json``: format version, layout at save time, and the backend's own counters.
* ``DIR/rng/rank{r}.pt``: each rank's torch RNG state (restored only when the world size is unchanged).

Fixes for the distributed optimizer's checkpoints in megatron-core 0.16.1. Bugs 1-3 concern loading when it wraps
**torch's** AdamW (the fallback megatron uses without Transformer Engine or Apex, on CPU or GPU); bug 4 concerns
saving and hits any optimizer:

1. ``DistributedOptimizer.state_dict()`` asserts every parameter has ``state["step"]``; torch creates the state
   lazily at the first step, so loading into a fresh optimizer fails. :func:`prime_adam_state` creates zero
   moments and ``step = 0``, which is exactly torch's lazy initial state.
2. ``_set_main_param_and_optimizer_states`` copies every destination key, ``step`` included, from a source dict
   that never has ``step`` (it is restored from ``param_groups``): ``KeyError: 'step'``. Fixed by copying the keys
   the source has.
3. ``load_state_dict`` gives **one shared** ``step`` tensor to every parameter. torch's AdamW increments ``step``
   in place once per parameter, so after the first step after a resume ``step = 1 + n_params`` and the bias
   correction is silently wrong. Fixed by giving each parameter its own copy.
4. ``sharded_param_state_fully_reshardable`` slices the gathered optimizer state with the *padded* buffer offsets
   of ``param_index_map``, but ``get_parameter_state_dp_zero`` concatenates the buckets *without* their padding.
   Whenever a stage's buffer has several buckets (always on the last stage of a tied-embedding model under PP:
   the shared embedding gets its own bucket), the main weights and Adam moments of every parameter after the first
   bucket are saved shifted, and a resume silently loads wrong weights. Fixed by re-inserting the padding.

:func:`install_adam_checkpoint_fixes` applies them to one optimizer instance (idempotent); nothing global is
patched.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lmix_core.errors import BackendError, CheckpointError
from lmix_core.train.checkpoint import read_json, read_torch

__all__ = [
    "DIST_OPT_METADATA",
    "install_adam_checkpoint_fixes",
    "load",
    "prime_adam_state",
    "save",
]

FORMAT = 1

#: metadata for the distributed optimizer's sharded state dict (reshardable over TP, PP and DP, gloo gather).
DIST_OPT_METADATA = {
    "distrib_optim_sharding_type": "fully_reshardable",
    "distrib_optim_fully_reshardable_mem_efficient": True,
}


def _inner_optimizers(optimizer: Any) -> Iterator[Any]:
    """The megatron optimizers inside a ``ChainedOptimizer`` (or the optimizer itself)."""
    yield from getattr(optimizer, "chained_optimizers", [optimizer])


def _is_torch_adam(megatron_optimizer: Any) -> bool:
    inner = getattr(megatron_optimizer, "optimizer", None)
    return isinstance(inner, torch.optim.Adam | torch.optim.AdamW)


def prime_adam_state(megatron_optimizer: Any) -> None:
    """Give every parameter of a torch Adam(W) the state torch would create at its first step (bug 1)."""
    inner = megatron_optimizer.optimizer
    for group in inner.param_groups:
        for p in group["params"]:
            state = inner.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group.get("amsgrad", False):
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _unshare_steps(megatron_optimizer: Any) -> None:
    """Bug 3: one ``step`` tensor per parameter."""
    for state in megatron_optimizer.optimizer.state.values():
        if "step" in state and isinstance(state["step"], torch.Tensor):
            state["step"] = state["step"].detach().clone()


def _with_bucket_padding(opt: Any, state: Any) -> Any:
    """Bug 4: re-insert the padding between buckets that ``get_parameter_state_dp_zero`` drops.

    Its "world tensors" concatenate each bucket's *unpadded* elements, but ``sharded_param_state_fully_reshardable``
    slices them with ``param_index_map`` offsets of the *padded* buffer; every parameter after a padded bucket
    boundary is read shifted (megatron-core's own comment: "this is a bug in the param ranges logic", NVIDIA/Megatron-LM issue #504).
    """
    if state is None:
        return None
    for gbuf_idx, dtype_state in state.items():
        if not isinstance(gbuf_idx, int):
            continue
        buffer = opt.buffers[gbuf_idx]
        unpadded = [b.numel_unpadded for b in buffer.buckets]
        for world_tensors in dtype_state.values():
            for key, tensor in list(world_tensors.items()):
                if (
                    not isinstance(tensor, torch.Tensor)
                    or tensor.dim() != 1
                    or tensor.numel() != sum(unpadded)
                ):
                    continue
                full = torch.zeros(buffer.numel, dtype=tensor.dtype, device=tensor.device)  # [numel]
                offset = 0
                for (start, _end), n in zip(buffer.bucket_indices, unpadded, strict=True):
                    full[start : start + n] = tensor[offset : offset + n]
                    offset += n
                world_tensors[key] = full
    return state


def install_adam_checkpoint_fixes(optimizer: Any, *, fixes: Collection[int] = (1, 2, 3, 4)) -> None:
    """Apply the checkpoint fixes to every distributed optimizer inside ``optimizer`` (once per instance).

    Args:
        optimizer: a megatron optimizer (``ChainedOptimizer`` or ``DistributedOptimizer``).
        fixes: which fixes to apply (all by default; tests switch single ones off to show each bug).
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in _inner_optimizers(optimizer):
        if not isinstance(opt, DistributedOptimizer):
            continue
        if not _is_torch_adam(opt):
            fixes = tuple(f for f in fixes if f == 4)  # bug 4 is not specific to torch's AdamW
        if hasattr(opt, "_lmix_ckpt_fixes"):
            continue
        original_set = opt._set_main_param_and_optimizer_states
        original_load = opt.load_state_dict
        original_state_dict = opt.state_dict

        def set_states(
            self: Any, model_param: Any, tensors: dict[str, Any], _orig: Any = original_set
        ) -> None:
            if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
                return _orig(model_param, tensors)
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            dst = {"param": main_param, **self.optimizer.state[main_param]}
            for key, value in tensors.items():  # bug 2: only the keys the source has ('step' never is one)
                dst[key].copy_(value)
            return None

        def load_state_dict(self: Any, state_dict: Any, _orig: Any = original_load) -> None:
            _orig(state_dict)
            _unshare_steps(self)  # bug 3

        def state_dict(self: Any, _orig: Any = original_state_dict) -> Any:
            prime_adam_state(self)  # bug 1
            return _orig()

        if 2 in fixes:
            opt._set_main_param_and_optimizer_states = types.MethodType(set_states, opt)
        if 3 in fixes:
            opt.load_state_dict = types.MethodType(load_state_dict, opt)
        if 1 in fixes:
            opt.state_dict = types.MethodType(state_dict, opt)
        if 4 in fixes:
            original_reshardable = opt.sharded_param_state_fully_reshardable

            def reshardable(
                self: Any,
                model_sd: Any,
                is_loading: bool = False,
                metadata: Any = None,
                _orig: Any = original_reshardable,
            ) -> Any:
                plain = self.get_parameter_state_dp_zero

                def padded(**kwargs: Any) -> Any:
                    return _with_bucket_padding(self, plain(**kwargs))

                self.get_parameter_state_dp_zero = padded  # bug 4: only inside this call
                try:
                    return _orig(model_sd, is_loading, metadata)
                finally:
                    del self.get_parameter_state_dp_zero

            opt.sharded_param_state_fully_reshardable = types.MethodType(reshardable, opt)
        opt._lmix_ckpt_fixes = tuple(fixes)


def _in_process_results_queue() -> None:
    """Give megatron's checkpoint writer an in-process results queue (lmix saves synchronously).

    Its default is ``multiprocessing.get_context("spawn").Manager().Queue()``: a spawned manager process that
    re-imports the launching ``__main__`` module (``python -m lmix`` or a test script) and so hangs or re-runs it
    unless the module has a ``__main__`` guard, and costs a process start per rank. Synchronous saves put and get
    the write results in the calling process, so a plain ``queue.Queue`` is enough.
    """
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def _prefixed(tree: Any, prefix: str) -> Any:
    """A sharded state dict with every sharded entry's checkpoint key prefixed (a second optimizer state)."""
    if isinstance(tree, dict):
        return {k: _prefixed(v, prefix) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_prefixed(v, prefix) for v in tree]
    is_instance = dataclasses.is_dataclass(tree) and not isinstance(tree, type)
    if is_instance and hasattr(tree, "key") and isinstance(tree.key, str):
        return dataclasses.replace(tree, key=prefix + tree.key)
    return tree


def _sharded(model: Any, optimizers: Sequence[Any], *, is_loading: bool) -> dict[str, Any]:
    model_sd = model.sharded_state_dict()
    out: dict[str, Any] = {"model": model_sd}
    for k, opt in enumerate(optimizers):
        sd = opt.sharded_state_dict(model_sd, is_loading=is_loading, metadata=DIST_OPT_METADATA)
        out["optimizer" if k == 0 else f"optimizer_{k}"] = sd if k == 0 else _prefixed(sd, f"state{k}/")
    return out


def save(
    directory: Path, *, model: Any, optimizers: Sequence[Any], meta: dict[str, Any], hf_side_dir: Path | None
) -> None:
    """Write model and optimizer states (every rank calls it; ``directory`` must not hold a checkpoint yet).

    Args:
        directory: the checkpoint directory.
        model: this rank's unwrapped ``GPTModel`` stage.
        optimizers: the megatron optimizers, one per optimiser state (empty saves the model only); state ``k > 0``
            is stored under keys prefixed ``state{k}/``.
        meta: JSON-able backend counters, written by global rank 0.
        hf_side_dir: an HF directory whose config and tokenizer files are copied into ``DIR/hf``.
    """
    from megatron.core import dist_checkpointing

    from lmix_megatron.convert import copy_side_files

    directory = Path(directory)
    rank = dist.get_rank()
    if rank == 0:
        if (directory / "dist").exists() and any((directory / "dist").iterdir()):
            raise BackendError(f"{str(directory)!r} already holds a checkpoint; save into an empty directory")
        (directory / "dist").mkdir(parents=True, exist_ok=True)
        (directory / "rng").mkdir(parents=True, exist_ok=True)
    dist.barrier()
    for opt in optimizers:
        install_adam_checkpoint_fixes(opt)
    _in_process_results_queue()
    dist_checkpointing.save(_sharded(model, optimizers, is_loading=False), str(directory / "dist"))
    torch.save({"cpu": torch.get_rng_state()}, directory / "rng" / f"rank{rank}.pt")
    if rank == 0:
        if hf_side_dir is not None:
            copy_side_files(Path(hf_side_dir), directory / "hf")
        content = "model+optimizer" if optimizers else "model"
        body = {"format": FORMAT, "content": content, "optimizer_states": len(optimizers), **meta}
        (directory / "lmix_megatron.json").write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    dist.barrier()


def read_meta(directory: Path) -> dict[str, Any]:
    """The ``lmix_megatron.json`` of a checkpoint (raises :class:`BackendError` when it is not one)."""
    path = Path(directory) / "lmix_megatron.json"
    if not path.exists() or not (Path(directory) / "dist").is_dir():
        raise BackendError(
            f"{str(directory)!r} is not a megatron checkpoint written by lmix (no lmix_megatron.json)"
        )
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"cannot read {str(path)!r}: it holds a {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise BackendError(
            f"{str(directory)!r} has checkpoint format {meta.get('format')!r}; this lmix reads {FORMAT}"
        )
    return meta


def load(directory: Path, *, model: Any, optimizers: Sequence[Any]) -> dict[str, Any]:
    """Load what :func:`save` wrote, at this process's layout (resharding as needed); returns the meta dict.

    With no ``optimizers`` only the model is loaded (e.g. a checkpoint used as initial weights).
    """
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    meta = read_meta(directory)
    if optimizers and meta.get("content") != "model+optimizer":
        raise BackendError(f"{str(directory)!r} holds no optimizer state; it cannot be resumed from")
    saved_states = int(meta.get("optimizer_states", 1))
    if optimizers and saved_states != len(optimizers):
        raise BackendError(
            f"{str(directory)!r} holds {saved_states} optimiser state(s), the run keeps {len(optimizers)}; "
            "resume with the mixer the checkpoint was written with"
        )
    for opt in optimizers:
        install_adam_checkpoint_fixes(opt)
    sharded = _sharded(model, optimizers, is_loading=True)
    try:
        state = dist_checkpointing.load(sharded, str(directory / "dist"))
        model.load_state_dict(state["model"], strict=True)
        for k, opt in enumerate(optimizers):
            opt.load_state_dict(state["optimizer" if k == 0 else f"optimizer_{k}"])
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign checkpoint: one message naming it
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(
            f"cannot restore the model and optimizer from {str(directory / 'dist')!r}: {type(exc).__name__}: {first}"
        ) from None
    rng = directory / "rng" / f"rank{dist.get_rank()}.pt"
    if rng.exists() and meta.get("world_size") == dist.get_world_size():
        state = read_torch(rng)
        if not (isinstance(state, dict) and isinstance(state.get("cpu"), torch.Tensor)):
            raise CheckpointError(f"cannot read {str(rng)!r}: it holds no 'cpu' RNG state tensor")
        try:
            torch.set_rng_state(state["cpu"])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot restore {str(rng)!r}: {exc}") from None
    return meta
