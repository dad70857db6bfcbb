"""Hugging Face ⇄ Megatron conversion for Llama, Qwen2 and Qwen3 (tied or untied), at any TP × PP.

Written in lmix (Megatron-Bridge and mbridge pull CUDA-only dependencies). Layouts:

* ``linear_qkv.weight [ng·(nq/ng + 2)·d, h]`` is grouped per KV group ``g``: ``[q_g (nq/ng heads); k_g; v_g]``,
  where ``q_g`` are the query heads that share KV head ``g`` (HF's ``repeat_kv`` order). The bias likewise.
  A TP shard is a plain chunk along dim 0 (whole groups).
* ``linear_fc1.weight = [gate; up]``, but TP shard ``r`` is ``[gate_r; up_r]`` (not ``chunk(full)[r]``).
* Column-parallel (``linear_qkv``, ``linear_fc1``, ``output_layer``, ``word_embeddings``) split dim 0;
  row-parallel (``linear_proj``, ``linear_fc2``) split dim 1; norms are replicated.
* The vocabulary rows are zero-padded to a multiple of TP on import and stripped on export.
* Local-spec norm names (``input_layernorm.weight``, ``pre_mlp_layernorm.weight``) and TE's fused names
  (``self_attention.linear_qkv.layer_norm_weight``, ``mlp.linear_fc1.layer_norm_weight``) are both understood.
* ``decoder.layers.{i}`` is stage-local; the HF index is ``layer.layer_number - 1``.
* Tied embeddings under PP: the last stage's ``output_layer.weight`` copy is loaded from ``embed_tokens`` too.

On-disk Megatron format written by :func:`convert` (and by the backend's checkpoints): ``DIR/dist/`` holds a
``megatron.core.dist_checkpointing`` checkpoint (global shapes, so it loads at any TP/PP) and ``DIR/hf/`` the HF
config, generation config and tokenizer files.

Command line (``lmix convert`` reaches :func:`main` through ``MegatronBackend.convert``, the backend's registered
entry point)::

    lmix convert --to megatron SRC_HF_DIR DST_DIR [--tp 2 --pp 2]
    lmix convert --to hf --from megatron SRC_DIR DST_HF_DIR
    python -m lmix_megatron.convert {hf2mcore,mcore2hf} SRC DST [--tp N --pp M]

Without ``torchrun``, a conversion at ``tp·pp > 1`` relaunches itself under ``torchrun --nproc_per_node tp·pp``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from lmix_core.errors import BackendError
from lmix_megatron.model import Arch

__all__ = [
    "HFWeights",
    "convert",
    "export_hf_state_dict",
    "load_hf_weights",
    "main",
    "read_hf_config",
    "write_hf_dir",
]

Direction = Literal["hf2mcore", "mcore2hf"]

#: files copied next to a Megatron checkpoint so that it is self-describing.
_HF_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
)

_TE_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


# -- reading HF weights -----------------------------------------------------------------------------------------
class HFWeights:
    """Lazy reader of an HF checkpoint directory (safetensors, sharded or not, or ``pytorch_model*.bin``)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._index: dict[str, Path] = {}
        self._bins: dict[str, Tensor] | None = None
        index = self.directory / "model.safetensors.index.json"
        single = self.directory / "model.safetensors"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._index = {k: self.directory / v for k, v in weight_map.items()}
        elif single.exists():
            from safetensors import safe_open

            with safe_open(str(single), framework="pt") as f:
                self._index = dict.fromkeys(f.keys(), single)
        else:
            bins = sorted(self.directory.glob("pytorch_model*.bin"))
            if not bins:
                raise BackendError(
                    f"no model weights in {str(self.directory)!r} (expected model.safetensors, "
                    "model.safetensors.index.json or pytorch_model*.bin)"
                )
            self._bins = {}
            for b in bins:
                self._bins.update(torch.load(b, map_location="cpu", weights_only=True))

    def names(self) -> set[str]:
        return set(self._bins) if self._bins is not None else set(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def get(self, name: str) -> Tensor:
        """One tensor, as stored."""
        if self._bins is not None:
            if name not in self._bins:
                raise BackendError(f"{str(self.directory)!r} has no tensor {name!r}")
            return self._bins[name]
        if name not in self._index:
            raise BackendError(f"{str(self.directory)!r} has no tensor {name!r}")
        from safetensors import safe_open

        with safe_open(str(self._index[name]), framework="pt") as f:
            return f.get_tensor(name)


def read_hf_config(directory: Path | str) -> Any:
    """The HF ``PretrainedConfig`` of a model directory (or of a Megatron directory's ``hf/`` side files)."""
    import transformers

    directory = Path(directory)
    if (directory / "hf" / "config.json").exists() and not (directory / "config.json").exists():
        directory = directory / "hf"
    if not (directory / "config.json").exists():
        raise BackendError(f"{str(directory)!r} has no config.json; expected a Hugging Face model directory")
    return transformers.AutoConfig.from_pretrained(str(directory))


# -- the parameter map ------------------------------------------------------------------------------------------
def _local_name(name: str) -> str:
    m = _LAYER.match(name)
    if m and m.group(2) in _TE_TO_LOCAL:
        return f"decoder.layers.{m.group(1)}.{_TE_TO_LOCAL[m.group(2)]}"
    return name


def _params(model: Any) -> Iterator[tuple[str, int | None, str, Tensor]]:
    """``(megatron name, HF layer index or None, stage-local suffix, parameter)`` in a fixed order."""
    layers = model.decoder.layers
    for name, param in model.named_parameters():
        local = _local_name(name)
        m = _LAYER.match(local)
        if m:
            yield name, int(layers[int(m.group(1))].layer_number) - 1, m.group(2), param
        else:
            yield name, None, local, param


def _hf_layer(i: int) -> str:
    return f"model.layers.{i}."


def _split(kind: str, full: Tensor, tp: int, rank: int) -> Tensor:
    if kind == "replicated":
        return full
    if kind in ("column", "vocab"):
        return full.chunk(tp, dim=0)[rank]
    if kind == "row":
        return full.chunk(tp, dim=1)[rank]
    raise AssertionError(kind)


def _group_qkv(q: Tensor, k: Tensor, v: Tensor, arch: Arch) -> Tensor:
    """HF q, k, v (weights ``[n·d, h]`` or biases ``[n·d]``) → megatron's per-group ``[q_g; k_g; v_g]``."""
    ng, d = arch.num_kv_heads, arch.head_dim
    tail = q.shape[1:]
    q = q.reshape(ng, -1, *tail)  # [ng, (nq/ng)·d, ...]
    k = k.reshape(ng, d, *tail)  # [ng, d, ...]
    v = v.reshape(ng, d, *tail)  # [ng, d, ...]
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)  # [ng·(nq/ng + 2)·d, ...]


def _ungroup_qkv(qkv: Tensor, arch: Arch) -> tuple[Tensor, Tensor, Tensor]:
    ng, d = arch.num_kv_heads, arch.head_dim
    per_group = arch.num_heads // ng
    tail = qkv.shape[1:]
    g = qkv.reshape(ng, per_group + 2, d, *tail)  # [ng, nq/ng + 2, d, ...]
    q = g[:, :per_group].reshape(arch.num_heads * d, *tail)  # [nq·d, ...]
    k = g[:, per_group].reshape(ng * d, *tail)  # [ng·d, ...]
    v = g[:, per_group + 1].reshape(ng * d, *tail)  # [ng·d, ...]
    return q, k, v


_LAYER_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    # stage-local suffix -> (kind, HF suffixes under model.layers.{i}.)
    "input_layernorm.weight": ("replicated", ("input_layernorm.weight",)),
    "pre_mlp_layernorm.weight": ("replicated", ("post_attention_layernorm.weight",)),
    "self_attention.linear_qkv.weight": (
        "qkv",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    ),
    "self_attention.linear_qkv.bias": (
        "qkv",
        ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    ),
    "self_attention.q_layernorm.weight": ("replicated", ("self_attn.q_norm.weight",)),
    "self_attention.k_layernorm.weight": ("replicated", ("self_attn.k_norm.weight",)),
    "self_attention.linear_proj.weight": ("row", ("self_attn.o_proj.weight",)),
    "mlp.linear_fc1.weight": ("fc1", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    "mlp.linear_fc2.weight": ("row", ("mlp.down_proj.weight",)),
}


def _rule(layer: int | None, suffix: str, arch: Arch) -> tuple[str, tuple[str, ...]]:
    if layer is not None:
        if suffix not in _LAYER_RULES:
            raise BackendError(f"no HF counterpart known for megatron parameter 'decoder.layers.*.{suffix}'")
        kind, names = _LAYER_RULES[suffix]
        return kind, tuple(_hf_layer(layer) + n for n in names)
    if suffix == "embedding.word_embeddings.weight":
        return "vocab", ("model.embed_tokens.weight",)
    if suffix == "output_layer.weight":
        return "vocab", ("model.embed_tokens.weight",) if arch.tied else ("lm_head.weight",)
    if suffix == "decoder.final_layernorm.weight":
        return "replicated", ("model.norm.weight",)
    raise BackendError(f"no HF counterpart known for megatron parameter {suffix!r}")


# -- HF -> megatron ---------------------------------------------------------------------------------------------
def load_hf_weights(model: Any, arch: Arch, get: Callable[[str], Tensor]) -> None:
    """Copy HF tensors into this rank's shard of ``model`` (an unwrapped ``GPTModel``).

    Args:
        model: this rank's ``GPTModel`` stage.
        arch: the architecture read from the HF config.
        get: HF tensor by name (e.g. :meth:`HFWeights.get`).
    """
    from megatron.core import parallel_state as ps

    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    padded = arch.padded_vocab_size(tp)
    with torch.no_grad():
        for name, layer, suffix, param in _params(model):
            kind, hf_names = _rule(layer, suffix, arch)
            tensors = [get(n) for n in hf_names]
            if kind == "qkv":
                q, k, v = tensors
                shard = _group_qkv(q, k, v, arch).chunk(tp, dim=0)[rank]
            elif kind == "fc1":
                gate, up = tensors
                shard = torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]], dim=0)
            elif kind == "vocab":
                full = tensors[0]
                if full.shape[0] != arch.vocab_size:
                    raise BackendError(
                        f"{hf_names[0]!r} has {full.shape[0]} rows, config says {arch.vocab_size}"
                    )
                full = torch.cat([full, full.new_zeros(padded - full.shape[0], *full.shape[1:])], dim=0)
                shard = _split("vocab", full, tp, rank)
            else:
                shard = _split(kind, tensors[0], tp, rank)
            if tuple(shard.shape) != tuple(param.shape):
                raise BackendError(
                    f"shape mismatch loading {name!r}: HF gives {tuple(shard.shape)}, megatron expects "
                    f"{tuple(param.shape)}"
                )
            param.copy_(shard.to(param.dtype))


# -- megatron -> HF ---------------------------------------------------------------------------------------------
def _gather_tp(t: Tensor, group: Any, tp: int) -> list[Tensor]:
    if tp == 1:
        return [t]
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return parts


def stage_hf_tensors(model: Any, arch: Arch, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """This pipeline stage's parameters as full HF tensors (TP all-gathered; identical on every TP rank).

    Args:
        model: this rank's unwrapped ``GPTModel`` stage (every TP rank of the stage must call this).
        arch: the architecture.
        dtype: cast to this dtype (None keeps the parameters' dtype).
    """
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    group = ps.get_tensor_model_parallel_group()
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for _name, layer, suffix, param in _params(model):
            kind, hf_names = _rule(layer, suffix, arch)
            if suffix == "output_layer.weight" and arch.tied:
                continue  # the first stage exports the shared matrix as embed_tokens
            parts = _gather_tp(param.detach(), group, tp) if kind != "replicated" else [param.detach()]
            pieces: tuple[Tensor, ...]
            if kind == "qkv":
                pieces = _ungroup_qkv(torch.cat(parts, dim=0), arch)
            elif kind == "fc1":
                halves = [p.chunk(2, dim=0) for p in parts]
                pieces = (torch.cat([h[0] for h in halves], 0), torch.cat([h[1] for h in halves], 0))
            elif kind == "vocab":
                pieces = (torch.cat(parts, dim=0)[: arch.vocab_size],)
            elif kind == "row":
                pieces = (torch.cat(parts, dim=1),)
            elif kind == "column":
                pieces = (torch.cat(parts, dim=0),)
            else:
                pieces = (parts[0],)
            for n, t in zip(hf_names, pieces, strict=True):
                t = t.to("cpu", dtype=dtype or t.dtype).contiguous()
                out[n] = t.clone() if t.data_ptr() == param.data_ptr() else t
    return out


def export_hf_state_dict(
    model: Any, arch: Arch, *, dtype: torch.dtype | None = None
) -> dict[str, Tensor] | None:
    """The whole policy as an HF state dict, on this replica's model-parallel leader (None on other ranks).

    Every rank of the model-parallel group must call it. Tied models get ``lm_head.weight`` pointing at
    ``model.embed_tokens.weight``.
    """
    from megatron.core import parallel_state as ps

    stage = stage_hf_tensors(model, arch, dtype)
    if ps.get_tensor_model_parallel_rank() != 0:
        return None
    pp = ps.get_pipeline_model_parallel_world_size()
    if pp > 1:
        group = ps.get_pipeline_model_parallel_group()
        ranks = dist.get_process_group_ranks(group)
        gathered: list[Any] = [None] * pp if dist.get_rank() == ranks[0] else []
        dist.gather_object(
            stage, gathered if dist.get_rank() == ranks[0] else None, dst=ranks[0], group=group
        )
        if dist.get_rank() != ranks[0]:
            return None
        stage = {}
        for part in gathered:
            stage.update(part)
    if arch.tied:
        stage["lm_head.weight"] = stage["model.embed_tokens.weight"]
    return stage


def write_hf_dir(
    state_dict: dict[str, Tensor],
    hf_config: Any,
    directory: Path | str,
    *,
    side_files_from: Path | None = None,
) -> None:
    """Write an HF model directory (weights, config, generation config, tokenizer files when available)."""
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = next(iter(state_dict.values())).dtype
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if getattr(hf_config, "tie_word_embeddings", False):
        model.tie_weights()
    if side_files_from is not None:
        gen = side_files_from / "generation_config.json"
        if gen.exists():
            model.generation_config = transformers.GenerationConfig.from_pretrained(str(side_files_from))
    model.save_pretrained(str(directory))
    if side_files_from is not None:
        for f in _HF_SIDE_FILES:
            if f in ("config.json", "generation_config.json"):
                continue
            if (side_files_from / f).exists():
                shutil.copy2(side_files_from / f, directory / f)


def copy_side_files(src: Path, dst: Path) -> None:
    """Copy the HF config and tokenizer files of ``src`` into ``dst`` (created)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in _HF_SIDE_FILES:
        if (src / f).exists():
            shutil.copy2(src / f, dst / f)


# -- offline conversion -----------------------------------------------------------------------------------------
def _under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def convert(
    src: Path | str,
    dst: Path | str,
    *,
    direction: Direction,
    tp: int = 1,
    pp: int = 1,
    timeout_s: float = 600.0,
) -> None:
    """Convert one checkpoint; every rank of a ``torchrun`` job (world a multiple of ``tp·pp``) calls it.

    Extra data-parallel replicas load the model too; only global rank 0's replica writes an HF output.

    Args:
        src: an HF model directory (``hf2mcore``) or a Megatron directory written by this function or by the
            backend's ``save_checkpoint`` (``mcore2hf``).
        dst: the directory to write (created; must be empty or absent).
        direction: ``hf2mcore`` or ``mcore2hf``.
        tp, pp: the layout to load the model in (memory per process); the written Megatron checkpoint loads at
            any layout.
        timeout_s: process-group timeout.
    """
    from megatron.core import dist_checkpointing, parallel_state

    from lmix_megatron import compat, parallel
    from lmix_megatron.model import build_gpt_model, resolve_spec_kind, transformer_config

    src, dst = Path(src), Path(dst)
    if direction not in ("hf2mcore", "mcore2hf"):
        raise BackendError(f"direction must be 'hf2mcore' or 'mcore2hf' (got {direction!r})")
    compat.install()
    created = parallel.init_distributed(timeout_s=timeout_s)
    try:
        parallel.init_model_parallel(tp=tp, pp=pp, timeout_s=timeout_s)
        hf_dir = src if direction == "hf2mcore" else src / "hf"
        hf_config = read_hf_config(hf_dir)
        arch = Arch.from_hf(hf_config)
        arch.check_parallel(tp=tp, pp=pp)
        dtype = _config_dtype(hf_config)
        tconfig = transformer_config(arch, tp=tp, pp=pp, dtype=dtype)
        model = build_gpt_model(arch, tconfig, kind=resolve_spec_kind("auto"))
        if dist.get_rank() == 0 and dst.exists() and any(dst.iterdir()):
            raise BackendError(f"{str(dst)!r} is not empty; choose a new output directory")
        dist.barrier()
        if direction == "hf2mcore":
            load_hf_weights(model, arch, HFWeights(src).get)
            (dst / "dist").mkdir(parents=True, exist_ok=True)
            dist.barrier()
            from lmix_megatron.checkpoint import _in_process_results_queue

            _in_process_results_queue()
            dist_checkpointing.save(model.sharded_state_dict(), str(dst / "dist"))
            if dist.get_rank() == 0:
                copy_side_files(src, dst / "hf")
                (dst / "lmix_megatron.json").write_text(json.dumps({"format": 1, "content": "model"}) + "\n")
        else:
            if not (src / "dist").is_dir():
                raise BackendError(
                    f"{str(src)!r} has no dist/ folder; expected a Megatron directory written by lmix"
                )
            load_model_dist(model, src / "dist")
            sd = export_hf_state_dict(model, arch)
            if sd is not None and parallel_state.get_data_parallel_rank() == 0:
                write_hf_dir(sd, hf_config, dst, side_files_from=hf_dir)
        dist.barrier()
    finally:
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        if created:
            dist.destroy_process_group()


def load_model_dist(model: Any, directory: Path) -> None:
    """Load a model's parameters from a ``dist_checkpointing`` folder (extra optimizer keys are ignored)."""
    from megatron.core import dist_checkpointing

    state = dist_checkpointing.load(model.sharded_state_dict(), str(directory))
    model.load_state_dict(state, strict=True)


def _config_dtype(hf_config: Any) -> Literal["float32", "bfloat16"]:
    dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    return "bfloat16" if dtype in (torch.bfloat16, "bfloat16") else "float32"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmix convert", description="Convert a checkpoint between Hugging Face and Megatron formats."
    )
    p.add_argument("direction", choices=["hf2mcore", "mcore2hf"])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size to load the model at (default 1)")
    p.add_argument(
        "--pp", type=int, default=1, help="pipeline-parallel size to load the model at (default 1)"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="process-group timeout in seconds")
    return p


def _check_source(direction: str, src: Path, dst: Path) -> str:
    """A message when ``src``/``dst`` cannot work (checked before anything heavy is imported or launched)."""
    if direction == "hf2mcore" and not (src / "config.json").exists():
        return f"{str(src)!r} has no config.json; hf2mcore expects a Hugging Face model directory"
    if direction == "mcore2hf" and not (src / "dist").is_dir():
        return f"{str(src)!r} has no dist/ folder; mcore2hf expects a megatron directory written by lmix"
    if dst.exists() and any(dst.iterdir()):
        return f"{str(dst)!r} is not empty; choose a new output directory"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """``lmix convert`` entry point; returns the exit status.

    Outside ``torchrun`` with ``tp·pp > 1`` it relaunches itself as
    ``python -m torch.distributed.run --nproc_per_node tp·pp -m lmix_megatron.convert ...``.
    """
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if args.tp < 1 or args.pp < 1:
        print("lmix convert: --tp and --pp must be >= 1", file=sys.stderr)
        return 2
    problem = _check_source(args.direction, args.src, args.dst)
    if problem:
        print(f"lmix convert: {problem}", file=sys.stderr)
        return 2
    if args.tp * args.pp > 1 and not _under_torchrun():
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(args.tp * args.pp),
            "-m",
            "lmix_megatron.convert",
            *(list(argv) if argv is not None else sys.argv[1:]),
        ]
        return subprocess.call(cmd)
    try:
        convert(args.src, args.dst, direction=args.direction, tp=args.tp, pp=args.pp, timeout_s=args.timeout)
    except BackendError as exc:
        print(f"lmix convert: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
