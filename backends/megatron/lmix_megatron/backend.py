"""The ``megatron`` trainer backend: tensor × pipeline × data parallel training on megatron-core under torchrun."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast, final

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor

from lmix_core.backend_settings import BackendSettings
from lmix_core.errors import BackendError, ConfigError
from lmix_core.interfaces.backend import BackendContext, Objective, TrainerBackend
from lmix_core.interfaces.rollout_engine import EngineContext
from lmix_core.ops.update_average import present_weights
from lmix_core.types import Generation, GenerationRequest, MicroBatch, StepReport, TokenBatch, TokenStats
from lmix_megatron import batching, checkpoint, compat, parallel, vocab_parallel
from lmix_megatron.batching import Packed
from lmix_megatron.model import DTYPES, Arch, hidden_states_output

__all__ = ["MegatronBackend"]


@final
class MegatronBackend(TrainerBackend):
    r"""Trains an HF Llama/Qwen2/Qwen3 checkpoint as a megatron-core ``GPTModel`` over TP × PP × DP processes.

    Launch with ``torchrun --nproc_per_node N [--nnodes M ...] -m lmix run recipe.toml``; ``dp = world / (tp·pp)``.
    The recipe is the HF backend's with only ``[backend]`` changed.

    Per micro-batch the loss sees the statistics of the combined distribution

    .. math::  log π(a) = \log softmax(\mathrm{mix}(z_θ, sg(z_{ref})) / T)[a]

    computed from TP-split logits (:mod:`lmix_megatron.vocab_parallel`) for the scored tokens only, in token chunks
    recomputed in backward (activation checkpointing of the output layer), so no ``[N, S, V]`` tensor is built.

    Reference model (option "2b" of the design note): a frozen ``GPTModel`` with the policy's TP/PP layout runs a
    separate forward-only pipeline pass and stores, on the last stage, only its final hidden states (``T × h``, not
    ``T × V/TP`` logits); the loss recomputes ``z_ref = h_ref · W_refᵀ`` chunk by chunk. The pass made by
    ``score`` on a rollout batch is cached (``reference_cache``), so the PPO epochs and minibatches that follow run
    no reference pass. Measurements in ``docs/megatron.md``.

    Two optimiser states (``parallel_average``): one distributed optimizer per state; both step from the same
    snapshot on their own group's gradient and the update is ``θ̄ + Σ_k w_k Δ_k`` (:meth:`_averaged_step`).

    Data parallelism: megatron's DDP *averages* gradients over DP replicas (each is scaled by ``1/DP`` before the
    reduce-scatter); the loop's loss weights normalise by the global batch's counts (:meth:`all_sum`) times ``DP``,
    so the average is the global batch's gradient (``train.dp_normalization``).

    Sampling goes through the run's rollout engine (``context.rollout_engine``, the recipe's ``[rollout_engine]``),
    one on each replica's model-parallel leader (TP rank 0 of the first pipeline stage), which samples the
    replica's prompts; the result is broadcast to the replica's other ranks. Megatron-core's own inference engines
    are CUDA-only, so the engine keeps its own copy of the policy: before the first ``generate`` after an update,
    every rank takes part in exporting the full HF-named state dict (TP all-gather, PP gather to the leader) and
    the leader passes it to ``load_policy_weights``. Checkpoints are megatron ``dist_checkpointing`` (model and
    distributed optimizer, reshardable); the final model is exported in HF format.

    Peer convention: verl / NeMo-RL / slime keep the reference's log-probs only; logit averaging needs the whole
    reference distribution, hence the stored hidden states.
    """

    @attrs.frozen(kw_only=True)
    class Config(BackendSettings):
        """Megatron backend parameters (besides the settings every backend shares:
        :class:`~lmix_core.backend_settings.BackendSettings`; ``logprob_chunk_size = 0`` is 2048 scored tokens per
        output-layer chunk, each chunk's logits recomputed in backward; ``recompute = "full"`` is megatron's full
        activation recompute of transformer layers).

        Attributes:
            model: HF model directory (Llama, Qwen2 or Qwen3 architecture), or a megatron directory written by
                ``lmix convert --to megatron`` or by a checkpoint (each rank then reads only its shards).
            references: directories (HF or megatron) of the frozen references, with the policy's architecture;
                when fewer than the run needs, the initial policy (``model``) fills in (reference = SFT model).
            tp: tensor-parallel size.
            pp: pipeline-parallel size (must divide the number of layers).
            dtype: parameter dtype; ``bfloat16`` wraps the model in megatron's ``Float16Module`` and keeps fp32
                main weights in the distributed optimizer.
            sequence_parallel: shard activations along the sequence between TP regions (tp > 1 only).
            layer_spec: ``auto`` (Transformer Engine on GPU when installed, else local), ``te`` or ``local``.
            vocab_mix: how the combiner's ``mix_logits`` meets the TP-split vocabulary: ``auto`` (shard-wise when
                the combiner is vocab-local, else gather), ``shard`` (refuse a non-local combiner), ``gather``.
            reference_cache: ``rollouts`` keeps the references' final hidden states of the last ``score``d
                batch (last pipeline stage, ``tokens × h`` per reference) so that ``train_step`` on its rows runs no
                reference pass; ``none`` runs the references in every call.
            distributed_timeout_s: process-group timeout; a rank that dies or hangs ends its peers' collectives
                with an error after this long.
        """

        model: str = ""
        references: tuple[str, ...] = ()
        tp: int = attrs.field(default=1, validator=v.ge(1))
        pp: int = attrs.field(default=1, validator=v.ge(1))
        dtype: Literal["float32", "bfloat16"] = attrs.field(default="float32", validator=v.in_(DTYPES))
        sequence_parallel: bool = False
        layer_spec: Literal["auto", "te", "local"] = attrs.field(
            default="auto", validator=v.in_(("auto", "te", "local"))
        )
        vocab_mix: Literal["auto", "shard", "gather"] = attrs.field(
            default="auto", validator=v.in_(("auto", "shard", "gather"))
        )
        reference_cache: Literal["rollouts", "none"] = attrs.field(
            default="rollouts", validator=v.in_(("rollouts", "none"))
        )
        distributed_timeout_s: float = attrs.field(default=1800.0, validator=v.gt(0.0))

        def __attrs_post_init__(self) -> None:
            if self.sequence_parallel and self.tp == 1:
                raise ConfigError("'sequence_parallel' needs tp > 1 (got tp=1)")

    config: Config

    native_format = "megatron"
    max_optimizer_states = 2

    @classmethod
    def convert(cls, src: Path, dst: Path, /, *, to_native: bool, tp: int = 1, pp: int = 1) -> int:
        """``lmix convert --to megatron`` (HF → megatron ``dist_checkpointing``, sharded ``tp × pp``) or ``--to hf``
        (back); relaunches itself under torchrun when ``tp·pp > 1`` (:func:`lmix_megatron.convert.main`)."""
        from lmix_megatron.convert import main

        direction = "hf2mcore" if to_native else "mcore2hf"
        return main([direction, str(src), str(dst), "--tp", str(tp), "--pp", str(pp)])

    def __init__(self, config: Config, context: BackendContext) -> None:
        super().__init__(config, context)  # checks the context (TrainerBackend.__init__)
        if not config.model:
            raise BackendError(
                "backend.model is not set; point it at a local Hugging Face model directory (Llama, Qwen2 or "
                "Qwen3) or at a megatron directory written by `lmix convert --to megatron`"
            )
        compat.install()
        timeout = config.distributed_timeout_s
        self._owns_pg = parallel.init_distributed(timeout_s=timeout)
        parallel.init_model_parallel(tp=config.tp, pp=config.pp, timeout_s=timeout)
        self.topo = parallel.Topology()
        self._seed_rng(context.seed)
        self._model_dir, self._hf_side = self._resolve_model(Path(config.model))
        from lmix_megatron.convert import read_hf_config

        self.hf_config = read_hf_config(self._hf_side)
        self.arch = Arch.from_hf(self.hf_config)
        self.arch.check_parallel(tp=config.tp, pp=config.pp)
        self._tokenizer: Any = None
        self._build_policy()
        self._build_references()
        self._build_optimizer()
        self._engine: Any = None
        self._engine_version = -1
        self._version = 0
        self._mix_local: dict[int, bool] = {}
        self._ref_cache: dict[bytes, list[Tensor]] = {}
        self._ref_keys: set[bytes] = set()
        self.reference_passes = 0  # forward-only reference pipeline passes run so far (tests, benchmarks)

    # -- construction ----------------------------------------------------------------------------------------
    @staticmethod
    def _resolve_model(path: Path) -> tuple[Path, Path]:
        """``(weights dir, HF side-files dir)``: an HF dir is both; a megatron dir keeps its HF files in ``hf/``."""
        if (path / "lmix_megatron.json").exists():
            return path, path / "hf"
        if not (path / "config.json").exists():
            raise BackendError(
                f"backend.model {str(path)!r} is neither an HF model directory (config.json) nor a megatron "
                "directory written by lmix (lmix_megatron.json)"
            )
        return path, path

    def _seed_rng(self, seed: int) -> None:
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        state = torch.get_rng_state()  # on CPU the compat layer maps megatron's RNG onto the CPU generator
        model_parallel_cuda_manual_seed(seed)
        torch.set_rng_state(state)

    def _tconfig(self) -> Any:
        from lmix_megatron.model import transformer_config

        c = self.config
        return transformer_config(
            self.arch,
            tp=c.tp,
            pp=c.pp,
            dtype=c.dtype,
            sequence_parallel=c.sequence_parallel,
            recompute=c.recompute == "full",
        )

    def _build_stage(self) -> tuple[Any, Any, Any]:
        """``(GPTModel, its config, the module to call)`` for this rank; Float16Module-wrapped in bf16."""
        from megatron.core.transformer.module import Float16Module

        from lmix_megatron.model import build_gpt_model, resolve_spec_kind

        tconfig = self._tconfig()
        gpt = build_gpt_model(self.arch, tconfig, kind=resolve_spec_kind(self.config.layer_spec))
        module = Float16Module(tconfig, gpt) if self.config.dtype == "bfloat16" else gpt
        return gpt, tconfig, module

    def _load_weights(self, gpt: Any, directory: Path) -> None:
        from lmix_megatron.convert import HFWeights, load_hf_weights

        if (directory / "lmix_megatron.json").exists():
            checkpoint.load(directory, model=gpt, optimizers=())
        else:
            load_hf_weights(gpt, self.arch, HFWeights(directory).get)

    def _build_policy(self) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        self.gpt, self.tconfig, module = self._build_stage()
        self._load_weights(self.gpt, self._model_dir)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            overlap_param_gather=False,
            use_distributed_optimizer=True,
            check_for_nan_in_grad=False,
        )
        self.model = DistributedDataParallel(self.tconfig, ddp_config, module)
        self.model.broadcast_params()

    def _build_references(self) -> None:
        refs = [Path(p) for p in self.config.references]
        n = self.context.num_references
        if len(refs) > n:
            refs = refs[:n]
        refs += [self._model_dir] * (n - len(refs))
        self.reference_dirs = refs
        self.refs: list[tuple[Any, Any]] = []
        for directory in refs:
            ref_arch = self._ref_arch(directory)
            if ref_arch != self.arch:
                raise BackendError(
                    f"reference {str(directory)!r} has a different architecture from the policy; the megatron "
                    "backend runs references in the policy's layout, so they must share its config"
                )
            gpt, tconfig, module = self._build_stage()
            self._load_weights(gpt, directory)
            module.requires_grad_(False)
            module.eval()
            self.refs.append((gpt, module))

    def _ref_arch(self, directory: Path) -> Arch:
        from lmix_megatron.convert import read_hf_config

        _, side = self._resolve_model(directory)
        return Arch.from_hf(read_hf_config(side))

    def _build_optimizer(self) -> None:
        from megatron.core.distributed import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        c = self.config
        ocfg = OptimizerConfig(
            optimizer="adam",
            lr=c.lr,
            min_lr=c.lr * c.min_lr_ratio,
            weight_decay=c.weight_decay,
            adam_beta1=c.betas[0],
            adam_beta2=c.betas[1],
            adam_eps=c.adam_eps,
            clip_grad=c.grad_clip,
            bf16=c.dtype == "bfloat16",
            params_dtype=DTYPES[c.dtype],
            use_distributed_optimizer=True,
        )
        self.optimizers = [
            get_megatron_optimizer(ocfg, [self.model]) for _ in range(self.context.num_optimizer_states)
        ]
        self.optimizer = self.optimizers[0]
        for opt in self.optimizers:
            checkpoint.install_adam_checkpoint_fixes(opt)
            if len(getattr(opt, "chained_optimizers", [opt])) != 1:
                raise BackendError(
                    "the megatron backend expects one distributed optimizer per state (no experts)"
                )
        self.tconfig.finalize_model_grads_func = finalize_model_grads
        self.tconfig.grad_scale_func = self.optimizer.scale_loss
        self.tconfig.no_sync_func = self.model.no_sync

    # -- topology --------------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.topo.dp_rank

    @property
    def world_size(self) -> int:
        return self.topo.dp

    @property
    def is_main(self) -> bool:
        return dist.get_rank() == 0

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Mean over DP replicas of each key (over the replicas that report it; keys may differ between them)."""
        if self.topo.dp == 1:
            return dict(values)
        gathered: list[Any] = [None] * self.topo.dp
        dist.all_gather_object(gathered, sorted(values), group=self.topo.dp_group)
        keys = sorted({k for ks in gathered for k in ks})
        if not keys:
            return {}
        t = torch.tensor(
            [float(values.get(k, 0.0)) for k in keys] + [1.0 if k in values else 0.0 for k in keys],
            dtype=torch.float64,
            device=parallel.device(),
        )
        dist.all_reduce(t, group=self.topo.dp_group)
        n = len(keys)
        return {k: float(t[i]) / max(float(t[n + i]), 1.0) for i, k in enumerate(keys)}

    def all_sum(self, values: Tensor, /) -> Tensor:
        """Sum over DP replicas (the ranks of one replica hold the same values, so only the DP group reduces)."""
        t = values.detach().to(device=parallel.device(), dtype=torch.float64).clone()
        if self.topo.dp > 1:
            dist.all_reduce(t, group=self.topo.dp_group)
        return t.cpu()

    def barrier(self) -> None:
        dist.barrier()

    # -- models ----------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            import transformers

            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(self._hf_side))
        return self._tokenizer

    def _lr(self, step: int) -> float:
        from lmix_hf.lr_schedule import lr_at

        c = self.config
        return lr_at(
            step,
            lr=c.lr,
            shape=c.lr_schedule,
            warmup_steps=c.warmup_steps,
            total_steps=c.total_steps,
            min_lr_ratio=c.min_lr_ratio,
        )

    def _set_lr(self, step: int) -> None:
        """Learning rate and weight decay of every param group for this step.

        Megatron marks groups with ``lr_mult``/``wd_mult`` (``wd_mult = 0`` for biases and norm weights) and
        relies on Megatron-LM's scheduler to apply them; without it torch's AdamW would decay every group with the
        default ``weight_decay``, so lmix applies the multipliers here.
        """
        lr = self._lr(step)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
                group["weight_decay"] = self.config.weight_decay * group.get("wd_mult", 1.0)

    def _output_weight(self, gpt: Any) -> Tensor:
        return gpt.shared_embedding_or_output_weight() if self.arch.tied else gpt.output_layer.weight

    def _mix(self, step: int) -> tuple[Callable[[Tensor, Sequence[Tensor]], Tensor], bool]:
        """The combiner's mix with ``step`` bound, and whether to gather the vocabulary for it."""
        combiner = self.context.combiner
        mix = partial(combiner.mix_logits, step=step)
        if self.config.vocab_mix == "gather":
            return mix, True
        if step not in self._mix_local:
            self._mix_local[step] = vocab_parallel.is_vocab_local(mix, combiner.num_references)
        local = self._mix_local[step]
        if not local and self.config.vocab_mix == "shard":
            raise BackendError(
                f"combiner {type(combiner).__name__}'s mix_logits is not vocab-local (it uses a statistic of the "
                "whole vocabulary), so it cannot be applied to TP shards; set backend.vocab_mix = 'auto' or "
                "'gather' to gather the vocabulary for it"
            )
        return mix, not local

    def _broadcast(self, obj: Any) -> Any:
        """``obj`` as the replica's leader has it, on every rank of the replica."""
        return parallel.broadcast_object(obj, src=self.topo.mp_leader, group=self.topo.mp_group)

    def _pack(self, tokens: TokenBatch) -> Packed:
        multiple = self.config.tp if self.tconfig.sequence_parallel else 1
        return batching.pack(tokens, multiple=multiple)

    # -- pipeline passes -------------------------------------------------------------------------------------
    def _run(
        self,
        module: Any,
        gpt: Any,
        packs: Sequence[Packed],
        loss_fn: Callable[[int, Tensor], tuple[Tensor, dict[str, Any]]],
        *,
        forward_only: bool,
    ) -> list[dict[str, Any]]:
        """One megatron schedule over ``packs``; ``loss_fn(i, hidden [s, b, h])`` runs on the last stage."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        dev = parallel.device()
        items = iter(list(enumerate(packs)))

        def forward_step(data_iterator: Any, model: Any) -> tuple[Tensor, Callable[[Tensor], Any]]:
            i, pk = next(data_iterator)
            ids = pk.input_ids.to(dev)  # [b, L]
            pos = torch.arange(pk.seq_len, device=dev)[None].expand_as(ids)  # [b, L]
            with hidden_states_output(gpt):
                out = model(ids, pos, None)
            return out, partial(loss_fn, i)

        seq = max(pk.seq_len for pk in packs)
        mbs = max(pk.num_rows for pk in packs)
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=items,
            model=[module],
            num_microbatches=len(packs),
            seq_length=seq,
            micro_batch_size=mbs,
            forward_only=forward_only,
        )

    def _scored_hidden(self, h: Tensor, pk: Packed, *, grad: bool) -> Tensor:
        """Final hidden states at the scored positions, ``[T, h]``, ready for the output layer's matmul."""
        from megatron.core.tensor_parallel import (
            copy_to_tensor_model_parallel_region,
            gather_from_sequence_parallel_region,
        )

        if self.tconfig.sequence_parallel:
            h = gather_from_sequence_parallel_region(h, tensor_parallel_output_grad=grad)  # [s, b, h]
            return h.reshape(-1, h.shape[-1])[pk.h_index.to(h.device)]  # [T, h] (backward: reduce-scatter)
        h = h.reshape(-1, h.shape[-1])[pk.h_index.to(h.device)]  # [T, h]
        return copy_to_tensor_model_parallel_region(h) if grad else h  # [T, h] (backward: TP all-reduce)

    def _row_hidden(self, h: Tensor, pk: Packed) -> list[Tensor]:
        """Per-row final hidden states ``[len_i, h]`` of a forward-only pass (for the reference cache)."""
        from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

        if self.tconfig.sequence_parallel:
            h = gather_from_sequence_parallel_region(h, tensor_parallel_output_grad=False)  # [s, b, h]
        return [h[: int(n), i].detach().clone() for i, n in enumerate(pk.lengths.tolist())]  # b × [len_i, h]

    def _reference_hidden(
        self, packs: Sequence[Packed], needed: Sequence[bool], *, fill_cache: bool
    ) -> dict[int, list[Tensor]]:
        """The references' final hidden states at the scored positions, ``{micro-batch: K × [T, h]}``.

        Option "2b": a forward-only pipeline pass per reference; the last stage keeps only hidden states. With
        ``reference_cache = "rollouts"`` the pass made by :meth:`score` on a rollout batch keeps every row's
        hidden states (keyed by the row's tokens, on the last stage), and later ``train_step`` calls on rows of
        that batch (PPO epochs, minibatches) reuse them instead of running the references again. Every rank
        keeps the cache's keys, so all stages agree on skipping the pass.
        """
        index = [i for i, need in enumerate(needed) if need]
        if not index or not self.refs:
            return {}
        use_cache = self.config.reference_cache == "rollouts"
        keys = {i: packs[i].row_keys() for i in index}
        if use_cache and not fill_cache and all(k in self._ref_keys for i in index for k in keys[i]):
            if not self.topo.last_stage:
                return {}
            return {
                i: [
                    batching.gather_rows([self._ref_cache[k][r] for k in keys[i]], packs[i])
                    for r in range(len(self.refs))
                ]
                for i in index
            }
        if use_cache and fill_cache:
            self._ref_cache, self._ref_keys = {}, set()
        store: dict[int, list[Tensor]] = {i: [] for i in index}
        sub = [packs[i] for i in index]
        self.reference_passes += 1
        for gpt, module in self.refs:

            def keep(j: int, h: Tensor, _sub: list[Packed] = sub) -> Any:
                rows = self._row_hidden(h, _sub[j])
                store[index[j]].append(batching.gather_rows(rows, _sub[j]))
                if use_cache and fill_cache:
                    for key, row in zip(keys[index[j]], rows, strict=True):
                        self._ref_cache.setdefault(key, []).append(row)
                return torch.zeros((), device=h.device), {}

            with torch.no_grad():
                self._run(module, gpt, sub, keep, forward_only=True)
        if use_cache and fill_cache:
            self._ref_keys = {k for i in index for k in keys[i]}
        return store

    def _stats(
        self,
        h: Tensor,
        pk: Packed,
        refs_h: list[Tensor],
        *,
        distribution: str,
        temperature: float,
        want_entropy: bool,
        want_ref_logp: bool,
        step: int,
        grad: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Per-token ``(logp, entropy, ref_logp)`` ``[T]`` of one micro-batch on the last stage."""
        hs = self._scored_hidden(h, pk, grad=grad)  # [T, h]
        w = self._output_weight(self.gpt)  # [V/TP, h]
        w_refs = [self._output_weight(gpt) for gpt, _ in self.refs]
        combined = distribution == "combined"
        mix, gather = self._mix(step) if combined else (None, False)
        n_mix = self.context.combiner.num_references if combined else 0
        use_refs = max(n_mix, 1 if want_ref_logp else 0)
        if len(refs_h) < use_refs:
            raise BackendError(f"{use_refs} reference model(s) are needed; the run loaded {len(refs_h)}")
        target = pk.target.to(hs.device)  # [T]
        temperature = temperature if temperature > 0 else 1.0

        def chunk(hc: Tensor, tc: Tensor, *rc: Tensor) -> tuple[Tensor, ...]:
            z = F.linear(hc.to(w.dtype), w).float()  # [c, V/TP]
            zr = [F.linear(r.to(wr.dtype), wr).float() for r, wr in zip(rc, w_refs)]  # K × [c, V/TP]
            lp, ent = vocab_parallel.token_stats(
                z,
                zr[:n_mix],
                tc,
                mix=mix,
                temperature=temperature,
                vocab_size=self.arch.vocab_size,
                want_entropy=want_entropy,
                gather=gather,
            )
            out = (lp,) if ent is None else (lp, ent)
            if want_ref_logp:
                rlp = vocab_parallel.ref_log_probs(
                    zr[0], tc, temperature=temperature, vocab_size=self.arch.vocab_size
                )
                out = (*out, rlp)
            return out

        size = self.config.logprob_chunk_size or 2048
        starts = range(0, int(hs.shape[0]), size)
        pieces: list[tuple[Tensor, ...]] = []
        ref_inputs = refs_h[:use_refs]
        for s in starts:
            sl = slice(s, s + size)
            args = (hs[sl], target[sl], *(r[sl] for r in ref_inputs))
            if grad and len(starts) > 1:
                from torch.utils.checkpoint import checkpoint as ckpt

                pieces.append(ckpt(chunk, *args, use_reentrant=False))
            else:
                pieces.append(chunk(*args))
        if not pieces:
            pieces = [chunk(hs, target, *ref_inputs)]
        cols = list(zip(*pieces))
        logp = torch.cat(cols[0])  # [T]
        ent = torch.cat(cols[1]) if want_entropy else None  # [T]
        rlp = torch.cat(cols[-1]) if want_ref_logp else None  # [T]
        return logp, ent, rlp

    def _needs_refs(self, tokens: TokenBatch, want_ref_logp: bool) -> bool:
        combined = tokens.distribution == "combined" and self.context.combiner.num_references > 0
        return bool(self.refs) and (combined or want_ref_logp)

    # -- scoring ---------------------------------------------------------------------------------------------
    def score(
        self,
        batch: TokenBatch,
        /,
        *,
        temperature: float = 1.0,
        entropy: bool = False,
        ref_logp: bool = False,
        step: int = 0,
    ) -> TokenStats:
        batch = self._broadcast(batch)
        parts = batching.split_tokens(batch, self.config.micro_batch_size)
        packs = [self._pack(p) for p in parts]
        ref_h = self._reference_hidden(packs, [self._needs_refs(p, ref_logp) for p in parts], fill_cache=True)
        results: dict[int, tuple[Tensor | None, ...]] = {}

        def loss_fn(i: int, h: Tensor) -> tuple[Tensor, dict[str, Any]]:
            lp, ent, rlp = self._stats(
                h,
                packs[i],
                ref_h.get(i, []),
                distribution=parts[i].distribution,
                temperature=temperature,
                want_entropy=entropy,
                want_ref_logp=ref_logp,
                step=step,
                grad=False,
            )
            results[i] = tuple(
                batching.unpack(x, packs[i]).cpu() if x is not None else None for x in (lp, ent, rlp)
            )
            return torch.zeros((), device=h.device), {}

        self.model.eval()
        with torch.no_grad():
            self._run(self.model, self.gpt, packs, loss_fn, forward_only=True)
        self.model.train()
        if self.topo.last_stage:
            # one column per statistic; a statistic is computed for every micro-batch or for none
            cols = [
                [t for t in col if t is not None] for col in zip(*(results[i] for i in range(len(packs))))
            ]
            out = tuple(batching.concat_rows(c)[:, : batch.input_ids.shape[1]] if c else None for c in cols)
        else:
            out = None
        out = parallel.broadcast_object(out, src=self.topo.last_stage_rank, group=self.topo.pp_group)
        logp, ent, rlp = out
        return TokenStats(logp=logp, entropy=ent, ref_logp=rlp)

    # -- training --------------------------------------------------------------------------------------------
    def train_step(
        self,
        groups: Sequence[Sequence[MicroBatch]],
        objective: Objective,
        /,
        *,
        step: int,
        lr_step: int | None = None,
    ) -> StepReport:
        self.check_groups(groups)
        n_states = self.context.num_optimizer_states
        groups = self._broadcast([list(g) for g in groups])
        self._set_lr(step if lr_step is None else lr_step)
        self.model.train()
        losses, norms, grads, summaries = [], [], [], []
        finite = True
        for k, group in enumerate(groups):
            mbs = [p for mb in group for p in batching.split_rows(mb, self.config.micro_batch_size)]
            loss, summary = self._forward_backward(mbs, objective, step)
            losses.append(loss)
            summaries.append((len(mbs), summary))
            finite = self._all_finite(loss) and finite
            norm = float("nan")
            if finite:
                opt = self.optimizers[k]
                opt.prepare_grads()
                norm = float(opt.get_grad_norm())
                finite = math.isfinite(norm)
                if finite and n_states > 1:  # the grad buffer is reused by the next group
                    # prepare_grads gave every main parameter its gradient
                    grads.append([cast(Tensor, p.grad).detach().clone() for p in self._main_params(k)])
            norms.append(norm)
        if finite and n_states == 1:
            self._clip(self.optimizer, norms[0])
            self.optimizer.step_with_ready_grads()
        elif finite:
            # a group empty on every DP replica takes no part: its state does not step, the others' weights rescale
            flags = self.all_mean({str(k): float(bool(g)) for k, g in enumerate(groups)})
            self._averaged_step(grads, norms, [flags[str(k)] > 0.0 for k in range(n_states)])
        if finite:
            self._version += 1
        self.model.zero_grad_buffer()
        for opt in self.optimizers:
            opt.zero_grad()
        total = sum(n for n, _ in summaries)
        keys = sorted({k for _, s in summaries for k in s})
        metrics = {
            k: sum(n * s[k] for n, s in summaries if k in s) / max(sum(n for n, s in summaries if k in s), 1)
            for k in keys
        }
        means = self.all_mean({"loss": sum(losses), **metrics}) if total else {"loss": 0.0}
        loss = means.pop("loss")
        return StepReport(loss=loss, grad_norms=tuple(norms), skipped=not finite, metrics=means)

    def _forward_backward(
        self, mbs: Sequence[MicroBatch], objective: Objective, step: int
    ) -> tuple[float, dict[str, float]]:
        """Gradients of ``Σ objective(micro-batch)`` in the (zeroed) grad buffer; returns the loss and metrics."""
        self.model.zero_grad_buffer()
        for opt in self.optimizers:
            opt.zero_grad()
        if not mbs:
            # another DP replica may train on this group: take part in its gradient reduction (zeros from here),
            # as the schedule does after a forward-backward, or the replicas' collectives would not match
            if self.topo.dp > 1:
                self.tconfig.finalize_model_grads_func([self.model])
            return 0.0, {}
        packs = [self._pack(mb.tokens) for mb in mbs]
        want_ref = bool(objective.needs_ref_logp)
        needed = [self._needs_refs(mb.tokens, want_ref) for mb in mbs]
        ref_h = self._reference_hidden(packs, needed, fill_cache=False)
        n_mb = len(packs)

        def loss_fn(i: int, h: Tensor) -> tuple[Tensor, dict[str, Any]]:
            mb = mbs[i]
            lp, ent, rlp = self._stats(
                h,
                packs[i],
                ref_h.get(i, []),
                distribution=mb.tokens.distribution,
                temperature=objective.temperature,
                want_entropy=bool(objective.needs_entropy),
                want_ref_logp=want_ref,
                step=step,
                grad=True,
            )
            dev = lp.device
            stats = TokenStats(
                logp=batching.unpack(lp, packs[i]),
                entropy=None if ent is None else batching.unpack(ent, packs[i]),
                ref_logp=None if rlp is None else batching.unpack(rlp, packs[i]).detach(),
            )
            tok = mb.tokens
            local = attrs.evolve(
                mb,
                tokens=attrs.evolve(
                    tok,
                    input_ids=tok.input_ids.to(dev),
                    attention_mask=tok.attention_mask.to(dev),
                    loss_mask=tok.loss_mask.to(dev),
                ),
                tensors={k: (t.to(dev) if isinstance(t, Tensor) else t) for k, t in mb.tensors.items()},
            )
            out = objective(stats, local)
            record = {"loss": out.loss.detach().clone().float().cpu()}
            record.update(
                {f"m/{k}": torch.as_tensor(x).detach().clone().float().cpu() for k, x in out.metrics.items()}
            )
            # megatron divides the returned loss by the number of micro-batches in place; undo it so the
            # gradient is the sum of the micro-batches' losses (the objective's convention)
            return out.loss * n_mb, record

        records = self._run(self.model, self.gpt, packs, loss_fn, forward_only=False)
        summary = self._summarise(records)
        return summary.pop("loss"), summary

    def _main_params(self, k: int) -> list[Tensor]:
        """Optimiser state ``k``'s fp32 main-parameter shards (same order in every state)."""
        opt = getattr(self.optimizers[k], "chained_optimizers", [self.optimizers[k]])[0]
        return [p for group in opt.optimizer.param_groups for p in group["params"]]

    def _averaged_step(self, grads: list[list[Tensor]], norms: list[float], present: list[bool]) -> None:
        r"""Parallel update averaging over the optimiser states: ``θ ← θ̄ + Σ_k w_k Δ_k``.

        Each state's AdamW steps from the same snapshot ``θ̄`` with its own group's gradient (clipped by that
        group's norm), as ``lmix_core.ops.update_average.step_averaged`` does for the HF backend; here on the
        distributed optimizer's fp32 main shards, then the model parameters are refreshed and all-gathered over DP.
        Memory: two extra fp32 copies of this rank's shard per state. A state whose group was empty on every
        replica (``present[k]`` False) is not stepped and the weights are
        ``lmix_core.ops.update_average.present_weights``, as ``step_averaged`` does.
        """
        weights = present_weights(self.context.update_weights, present)
        inners = [getattr(o, "chained_optimizers", [o])[0] for o in self.optimizers]
        mains = [self._main_params(k) for k in range(len(inners))]
        with torch.no_grad():
            snapshot = [p.detach().clone() for p in mains[0]]  # θ̄
            stepped = []
            for k, inner in enumerate(inners):
                if not present[k]:
                    stepped.append(snapshot)  # Δ_k = 0 with weight 0; moments and step count untouched
                    continue
                clip = self.config.grad_clip
                coef = min(1.0, clip / (norms[k] + 1e-6)) if clip > 0 else 1.0
                for p, s, g in zip(mains[k], snapshot, grads[k], strict=True):
                    p.copy_(s)  # every state starts from θ̄ (fp32 states share storage with the model buffer)
                    p.grad = g.mul_(coef) if coef != 1.0 else g
                inner.optimizer.step()
                stepped.append([p.detach().clone() for p in mains[k]])  # θ_k
            for i, s in enumerate(snapshot):
                theta = s.clone()
                for w, st in zip(weights, stepped, strict=True):
                    theta.add_(st[i] - s, alpha=w)  # θ̄ + Σ w_k (θ_k − θ̄)
                for k in range(len(inners)):
                    mains[k][i].copy_(theta)
            for k in range(len(inners)):
                for p in mains[k]:
                    p.grad = None
            inner0 = inners[0].optimizer
            real_step = inner0.step
            inner0.step = lambda *a, **kw: None  # parameters are already updated: only copy + all-gather
            try:
                inners[0].step_with_ready_grads()
            finally:
                inner0.step = real_step

    def _summarise(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """Loss summed and metrics averaged over micro-batches, from the last stage to every stage."""
        out: dict[str, float] | None = None
        if self.topo.last_stage:
            out = {"loss": float(sum(float(r["loss"]) for r in records))}
            keys = sorted({k for r in records for k in r if k.startswith("m/")})
            for k in keys:
                vals = [float(r[k]) for r in records if k in r]
                out[k[2:]] = sum(vals) / len(vals)
        return parallel.broadcast_object(out, src=self.topo.last_stage_rank, group=self.topo.pp_group)

    def _all_finite(self, loss: float) -> bool:
        flag = torch.tensor([1.0 if math.isfinite(loss) else 0.0], device=parallel.device())
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() == 1.0)

    def _clip(self, optimizer: Any, grad_norm: float) -> None:
        from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

        if self.config.grad_clip <= 0:
            return
        for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
            params = opt.get_parameters()
            if params:
                clip_grad_by_total_norm_fp32(params, max_norm=self.config.grad_clip, total_norm=grad_norm)

    # -- sampling --------------------------------------------------------------------------------------------
    def _export(self) -> dict[str, Tensor] | None:
        from lmix_megatron.convert import export_hf_state_dict

        return export_hf_state_dict(self.gpt, self.arch, dtype=DTYPES[self.config.dtype])

    def generate(self, request: GenerationRequest, /) -> Generation:
        if self._engine_version != self._version:  # the weight-sync point: once after each update
            sd = self._export()  # a collective: every rank takes part
            if self.topo.is_mp_leader:
                if self._engine is None:
                    self._engine = self.context.rollout_engine(
                        EngineContext(
                            combiner=self.context.combiner,
                            tokenizer=self.tokenizer,
                            policy_dir=self._hf_side,
                            reference_dirs=tuple(self.reference_dirs),
                            dtype=self.config.dtype,
                            device=parallel.device(),
                        )
                    )
                self._engine.load_policy_weights(sd if self._engine.needs_weights else None)
            self._engine_version = self._version
        gen = None
        if self.topo.is_mp_leader:
            gen = self._engine.generate(request)
        return self._broadcast(gen)

    # -- persistence -----------------------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, /) -> None:
        meta = {
            "tp": self.config.tp,
            "pp": self.config.pp,
            "dp": self.topo.dp,
            "world_size": dist.get_world_size(),
            "version": self._version,
        }
        checkpoint.save(
            Path(path), model=self.gpt, optimizers=self.optimizers, meta=meta, hf_side_dir=self._hf_side
        )

    def load_checkpoint(self, path: Path, /) -> None:
        meta = checkpoint.load(Path(path), model=self.gpt, optimizers=self.optimizers)
        self._version = int(meta.get("version", 0)) + 1  # force a fresh export to the rollout engine
        self._engine_version = -1

    def save_pretrained(self, path: Path, /) -> None:
        from lmix_megatron.convert import write_hf_dir

        sd = self._export()
        if sd is not None and self.topo.dp_rank == 0:
            write_hf_dir(sd, self.hf_config, Path(path), side_files_from=self._hf_side)
        dist.barrier()

    def close(self) -> None:
        from megatron.core import parallel_state

        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        if self._owns_pg and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_pg = False
