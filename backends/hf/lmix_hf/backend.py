"""The Hugging Face transformers backend: small runs, tests and the demo, data-parallel under ``torchrun``."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, final

import attrs
import torch
from attrs import validators as v

from lmix_core.backend_settings import BackendSettings
from lmix_core.errors import BackendError, ConfigError
from lmix_core.interfaces.backend import BackendContext, Objective, TrainerBackend
from lmix_core.interfaces.rollout_engine import EngineContext, SharedModels
from lmix_core.ops.update_average import step_averaged
from lmix_core.types import Generation, GenerationRequest, MicroBatch, StepReport, TokenBatch, TokenStats
from lmix_hf import checkpoint, distributed, lora, parallel
from lmix_hf.engine import HFEngine
from lmix_hf.loading import head_weight, load_causal_lm, load_tokenizer, model_dir, quiet_progress
from lmix_hf.lr_schedule import lr_at
from lmix_hf.micro_batches import split_rows
from lmix_hf.sampler import Sample
from lmix_hf.token_stats import token_stats

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule


@final
class HFBackend(TrainerBackend):
    r"""Trains a local transformers causal LM with AdamW; samples through the run's rollout engine.

    Models: the policy is loaded from ``model`` (with its tokenizer and chat template); ``context.num_references``
    frozen references (eval mode, no gradient, no optimiser state) are loaded from ``references`` in order, the
    missing ones from ``model`` again (the initial, e.g. SFT, model). ``combiner.mix_logits`` reads the first
    ``combiner.num_references`` of them; a KL penalty's ``ref_logp`` is the first reference alone.
    With ``lora_rank > 0`` only LoRA adapters train, and a reference that is ``model`` is not loaded again: it is the
    policy with its adapters left out, sharing its weights (:mod:`lmix_hf.lora`).

    Step: every micro-batch is split into chunks of ``micro_batch_size`` rows; each chunk is forwarded with
    gradient, scored with ``lmix_core.ops.mixed_logprobs.mixed_token_stats`` (logp, entropy, ref_logp at the
    objective's temperature), passed to the objective and back-propagated; gradients add up over chunks (the
    loop's loss weights are precomputed for the whole step). Under ``torchrun`` the gradients are averaged over
    ranks by ``DistributedDataParallel`` or reduce-scattered by FSDP2 (``parallel``; :mod:`lmix_hf.parallel`),
    DDP's convention: the loop's weights normalise by the global batch's counts times the world size, so the
    average is the global batch's gradient (``train.dp_normalization``). The pre-clip norm is reported,
    the gradient clipped to ``grad_clip`` and AdamW steps at ``lr_at(lr_step)`` (the optimiser-step count; the combiner's mix reads the loop ``step``). With two optimiser
    states (``parallel_average``), group ``k`` goes through AdamW state ``k``
    and ``lmix_core.ops.update_average.step_averaged`` sets ``θ ← θ̄ + Σ_k w_k Δ_k`` (a group empty on every rank
    takes no part: its state does not step and the other weights are rescaled to the same total). A non-finite loss or
    gradient norm leaves every parameter and optimiser state untouched and returns ``skipped=True``.

    Seeding: construction seeds torch's global generator with ``context.seed + rank`` (dropout, if the model
    has any); checkpoints save and restore it.

    AdamW follows ``torch.optim.AdamW``; weight decay applies to matrices (``ndim ≥ 2``) only, not to biases and
    norm gains (the transformers Trainer convention). ``bfloat16`` keeps parameters and optimiser moments in
    bf16 (pure bf16 training; under ``fsdp``: float32 master weights and moments, bf16 compute); log-probs are
    computed in float32 chunk by chunk. Dropout follows the model config (training forwards run in train mode,
    scoring and sampling in eval mode).
    """

    @attrs.frozen(kw_only=True)
    class Config(BackendSettings):
        """HF backend parameters (besides the settings every backend shares: :class:`~lmix_core.backend_settings.BackendSettings`).

        Attributes:
            model: local Hugging Face causal-LM directory of the policy (with its tokenizer).
            references: frozen reference model directories; missing ones default to ``model``.
            dtype: parameter dtype, ``float32`` or ``bfloat16``.
            device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
            attn_implementation: ``sdpa`` or ``eager``.
            shared_prompt: ``auto`` forwards the context a group's rows share (their prompt) once per group in
                training and scoring, where that gives the ordinary forward's values (not with training-mode
                dropout or gradient checkpointing; ``lmix_hf.token_stats``); ``off`` forwards every row whole.
            distributed_timeout_s: collective timeout under torchrun.
            lora_rank: train LoRA adapters of this rank instead of every weight (``peft``); 0 trains the full
                model. References that are ``model`` itself are then the policy with its adapters disabled (one
                copy of the weights): :mod:`lmix_hf.lora`.
            lora_alpha: LoRA scale ``α`` (the update is ``(α / r)·B A``).
            lora_dropout: dropout on the adapters' input, in training forwards.
            lora_target_modules: names (or name suffixes, e.g. ``q_proj``) of the linear layers that carry adapters;
                empty: every linear layer of the decoder (not the LM head).
            lora_export: what ``save_pretrained`` writes with LoRA: ``merged`` (an ordinary transformers directory of
                ``W₀ + (α/r)·B A``) or ``adapter`` (peft's adapter directory alone).
            parallel: data parallelism under torchrun: ``ddp`` (``DistributedDataParallel``: every rank holds the
                whole model and optimiser state) or ``fsdp`` (FSDP2 ``fully_shard`` per decoder layer and root:
                parameters, gradients, AdamW moments and frozen references sharded over ranks; with ``dtype =
                bfloat16`` float32 master weights, bfloat16 compute, float32 reduction): :mod:`lmix_hf.parallel`.
            fsdp_offload: with ``fsdp``, keep the sharded parameters, gradients and optimiser state in host memory
                (CUDA only).
        """

        model: str = ""
        references: tuple[str, ...] = ()
        dtype: Literal["float32", "bfloat16"] = attrs.field(
            default="float32", validator=v.in_(("float32", "bfloat16"))
        )
        device: Literal["auto", "cpu", "cuda"] = attrs.field(
            default="auto", validator=v.in_(("auto", "cpu", "cuda"))
        )
        attn_implementation: Literal["sdpa", "eager"] = attrs.field(
            default="sdpa", validator=v.in_(("sdpa", "eager"))
        )
        shared_prompt: Literal["auto", "off"] = attrs.field(default="auto", validator=v.in_(("auto", "off")))
        distributed_timeout_s: float = attrs.field(default=1800.0, validator=v.gt(0.0))
        lora_rank: int = attrs.field(default=0, validator=v.ge(0))
        lora_alpha: float = attrs.field(default=16.0, validator=v.gt(0.0))
        lora_dropout: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.lt(1.0)])
        lora_target_modules: tuple[str, ...] = ()
        lora_export: Literal["merged", "adapter"] = attrs.field(
            default="merged", validator=v.in_(("merged", "adapter"))
        )
        parallel: Literal["ddp", "fsdp"] = attrs.field(default="ddp", validator=v.in_(("ddp", "fsdp")))
        fsdp_offload: bool = False

        def __attrs_post_init__(self) -> None:
            if self.fsdp_offload and self.parallel != "fsdp":
                raise ConfigError(
                    f"'fsdp_offload' needs parallel = 'fsdp' (got parallel = {self.parallel!r})"
                )

    config: Config

    max_optimizer_states = 2

    def __init__(self, config: Config, context: BackendContext) -> None:
        super().__init__(config, context)  # checks the context (TrainerBackend.__init__)
        if not config.model:
            raise BackendError(
                "backend.model is not set; build a model with `lmix demo` or point backend.model at a local Hugging "
                "Face model directory"
            )
        policy_dir = model_dir(config.model, field="backend.model")
        ref_dirs = [
            model_dir(config.references[k], field=f"backend.references[{k}]")
            if k < len(config.references)
            else policy_dir
            for k in range(context.num_references)
        ]
        self._topology = distributed.setup(
            device=config.device,
            timeout_s=config.distributed_timeout_s,
            group_of_one=config.parallel == "fsdp",
            cpu_collectives=config.fsdp_offload,
        )
        torch.manual_seed(context.seed + self._topology.rank)
        device = self._topology.device
        self._tokenizer = load_tokenizer(policy_dir)
        sharded = config.parallel == "fsdp"
        if sharded and config.lora_rank > 0:
            raise BackendError("backend.parallel = 'fsdp' does not support LoRA (lora_rank > 0); use 'ddp'")
        self._policy = load_causal_lm(
            policy_dir,
            dtype="float32" if sharded else config.dtype,  # FSDP: float32 master weights, compute in `dtype`
            attn_implementation=config.attn_implementation,
            device=device,
        )
        self._lora = (
            lora.attach(
                self._policy,
                rank=config.lora_rank,
                alpha=config.lora_alpha,
                dropout=config.lora_dropout,
                target_modules=config.lora_target_modules,
                seed=context.seed,
            )
            if config.lora_rank > 0
            else None
        )
        self._policy.eval()
        if config.recompute == "full":
            self._policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._references = []
        for k, ref_dir in enumerate(ref_dirs):
            if self._lora is not None and ref_dir.resolve() == policy_dir.resolve():
                # the starting model: the policy's own weights with the adapters left out (lmix_hf.lora)
                self._references.append(self._lora.reference)
                continue
            ref = load_causal_lm(
                ref_dir, dtype=config.dtype, attn_implementation=config.attn_implementation, device=device
            )
            ref.requires_grad_(False).eval()
            if head_weight(ref).shape[0] != head_weight(self._policy).shape[0]:
                raise BackendError(
                    f"backend.references[{k}] ({str(ref_dir)!r}) has a vocabulary of {head_weight(ref).shape[0]} "
                    f"tokens, the policy {head_weight(self._policy).shape[0]}; references must share the tokenizer"
                )
            self._references.append(ref)
        wrap = functools.partial(
            parallel.wrap,
            parallel=config.parallel,
            topology=self._topology,
            compute_dtype=getattr(torch, config.dtype),
            offload=config.fsdp_offload,
        )
        self._model = wrap(self._policy, trainable=True)  # what the scoring code forwards (parallel.run)
        self._ref_models = [wrap(ref, trainable=False) for ref in self._references]
        self._params = [p for p in self._policy.parameters() if p.requires_grad]
        self._optimizers = [self._adamw() for _ in range(context.num_optimizer_states)]
        # sampling goes through the rollout engine; the in-process `hf` engine samples these very modules
        self._engine = context.rollout_engine(
            EngineContext(
                combiner=context.combiner,
                tokenizer=self._tokenizer,
                policy_dir=policy_dir,
                reference_dirs=tuple(ref_dirs),
                dtype=config.dtype,
                device=device,
                shared=SharedModels(policy=self._policy, references=tuple(self._references)),
            )
        )
        self._version = 0  # bumped by every update of the policy's weights
        self._engine_version = -1  # the version the engine last loaded

    def _adamw(self) -> torch.optim.AdamW:
        decay = [p for p in self._params if p.dim() >= 2]
        rest = [p for p in self._params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=self.config.lr,
            betas=self.config.betas,
            eps=self.config.adam_eps,
            # one fused kernel for all parameters (3x faster than the per-tensor loop for a 4M model on one CPU
            # thread); sharded (DTensor) parameters keep torch's default implementation
            fused=all(type(p.data) is torch.Tensor for p in self._params) or None,
        )

    # -- topology --------------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._topology.rank

    @property
    def world_size(self) -> int:
        return self._topology.world_size

    @property
    def is_main(self) -> bool:
        return self._topology.rank == 0

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        return distributed.mean_over_ranks(values, self._topology)

    def all_sum(self, values: torch.Tensor, /) -> torch.Tensor:
        return distributed.sum_over_ranks(values, self._topology)

    def barrier(self) -> None:
        distributed.barrier(self._topology)

    def close(self) -> None:
        self._engine.close()
        distributed.teardown(self._topology)

    # -- models ----------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def policy(self) -> Any:
        """The trainable transformers model."""
        return self._policy

    @property
    def references(self) -> tuple[Any, ...]:
        """The frozen reference models, in order."""
        return tuple(self._references)

    @property
    def device(self) -> torch.device:
        return self._topology.device

    def _mixing(self, distribution: str, step: int) -> tuple[list[Any], Any]:
        """The reference models (as the scoring code forwards them) and mix function of a distribution
        (``policy``: none)."""
        if distribution == "policy":
            return [], None
        combiner = self.context.combiner
        return self._ref_models[: combiner.num_references], functools.partial(combiner.mix_logits, step=step)

    @property
    def engine(self) -> Any:
        """The :class:`~lmix_core.interfaces.rollout_engine.RolloutEngine` this backend samples through."""
        return self._engine

    def sample(self, request: GenerationRequest, /) -> Sample:
        """Like :meth:`generate`, also returning the sampled tokens' log-probs under the sampling distribution."""
        return Sample(generation=self.generate(request))

    def generate(self, request: GenerationRequest, /) -> Generation:
        if parallel.is_sharded(self._model):
            return self._generate_sharded(request)
        if self._engine_version != self._version:  # the weight-sync point: once after each update
            engine = self._engine
            engine.load_policy_weights(self._policy_weights() if engine.needs_weights else None)
            self._engine_version = self._version
        self._policy.eval()
        return self._engine.generate(request)

    def _generate_sharded(self, request: GenerationRequest) -> Generation:
        """FSDP: the engine samples full-weight copies gathered for this call (:func:`lmix_hf.parallel.gathered`),
        freed when it returns: the policy, and the references the combiner mixes unless the request samples the
        policy alone (every rank makes the same requests, so the gathers match)."""
        engine = self._engine
        if engine.needs_weights:  # an engine with its own copy of the policy: full weights on every rank
            if self._engine_version != self._version:
                engine.load_policy_weights(parallel.full_state(self._model, rank0_only=False))
                self._engine_version = self._version
            return engine.generate(request)
        if not isinstance(engine, HFEngine):
            raise BackendError(
                f"backend.parallel = 'fsdp' lends gathered full-weight models only to the hf rollout engine; "
                f"{type(engine).__name__} samples the backend's own models in place (needs_weights is False), "
                "and FSDP shards them"
            )
        dtype = getattr(torch, self.config.dtype)
        k = self.context.combiner.num_references if request.distribution != "policy" else 0
        mixed = self._ref_models[:k]
        lent = (engine.policy, engine.references)
        engine.policy = parallel.gathered(self._model, dtype=dtype, device=self.device)
        engine.references = tuple(parallel.gathered(r, dtype=dtype, device=self.device) for r in mixed)
        try:
            return engine.generate(request)
        finally:
            engine.policy, engine.references = lent

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
        if ref_logp and not self._references:
            raise BackendError(
                "ref_logp was asked for, but the backend loaded no reference (context.num_references = 0)"
            )
        self._policy.eval()
        n, size = batch.num_rows, self.config.micro_batch_size
        pieces = [batch.select(slice(start, start + size)) for start in range(0, max(n, 1), size)]
        sharded = parallel.is_sharded(self._model)
        # FSDP forwards are collectives: every rank runs as many passes as the rank with most
        most, lockstep = self._agree([len(pieces)], pieces, ref_logp) if sharded else ([len(pieces)], ())
        with torch.no_grad(), parallel.head_gathered(self._ref_models):
            parts = []
            for piece in pieces:
                if sharded and not self._runs_collectives(piece):
                    self._zero_pass(lockstep)
                parts.append(self._stats(piece, temperature, entropy, ref_logp, step, lockstep))
            for _ in range(most[0] - len(pieces)):
                self._zero_pass(lockstep)
        if sharded:
            # FSDP keeps a root gathered after forward (for a backward that never comes)
            cast("FSDPModule", self._model).reshard()

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values).cpu()

        logp = torch.cat([p.logp for p in parts]).cpu()
        return TokenStats(logp=logp, entropy=cat("entropy"), ref_logp=cat("ref_logp"))

    def _agree(
        self, counts: Sequence[int], batches: Sequence[TokenBatch], ref_logp: bool
    ) -> tuple[list[int], tuple[Any, ...]]:
        """Under torchrun: the most passes any rank runs for each count and, under FSDP, the references every
        pass forwards (the most any rank's pass uses: FSDP forwards are collectives); one all-reduce."""
        if not self._topology.distributed:
            return list(counts), ()
        used = max(
            (max(len(self._mixing(b.distribution, 0)[0]), int(ref_logp)) for b in batches),
            default=int(ref_logp),
        )
        *most, refs = parallel.max_over_ranks([*counts, used], self._topology)
        return most, tuple(self._ref_models[:refs]) if parallel.is_sharded(self._model) else ()

    def _runs_collectives(self, batch: TokenBatch) -> bool:
        """Whether scoring ``batch`` forwards the models (a chunk of padding only does not)."""
        return bool(batch.attention_mask.any())

    def _zero_pass(self, lockstep: Sequence[Any]) -> None:
        """A pass with every collective of a chunk's (FSDP all-gathers, DDP's all-reduce in backward) and a zero
        gradient: for a rank with fewer chunks than another."""
        batch = parallel.dummy_batch(self._tokenizer.pad_token_id or 0, "policy")
        stats = self._stats(batch, 1.0, False, False, 0, lockstep)
        if torch.is_grad_enabled():
            (stats.logp.sum() * 0.0).backward()  # [1, 2] → every trainable parameter gets a zero gradient

    def _stats(
        self,
        batch: TokenBatch,
        temperature: float,
        entropy: bool,
        ref_logp: bool,
        step: int,
        lockstep: Sequence[Any] = (),
    ) -> TokenStats:
        refs, mix = self._mixing(batch.distribution, step)
        kl_ref = self._ref_models[0] if ref_logp else None
        return token_stats(
            batch,
            policy=self._model,
            mix_refs=refs,
            mix=mix,
            kl_ref=kl_ref,
            temperature=temperature,
            entropy=entropy,
            chunk_size=self.config.logprob_chunk_size or None,
            # FSDP: one forward per model and pass on every rank (a shared-prompt pass forwards twice)
            shared_prompt=self.config.shared_prompt == "auto" and not parallel.is_sharded(self._model),
            device=self.device,
            lockstep=lockstep,
        )

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
        K = self.context.num_optimizer_states
        if objective.needs_ref_logp and not self._references:
            raise BackendError(
                "the objective needs ref_logp, but the backend loaded no reference (num_references = 0)"
            )
        cfg = self.config
        lr = lr_at(
            step if lr_step is None else lr_step,
            lr=cfg.lr,
            shape=cfg.lr_schedule,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.total_steps,
            min_lr_ratio=cfg.min_lr_ratio,
        )
        for opt in self._optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sums: dict[str, float] = {}
        chunks = 0
        norms: list[float] = []
        grads: list[list[torch.Tensor | None]] = []
        per_group = [
            [c for mb in group for c in split_rows(mb, cfg.micro_batch_size, self.device)] for group in groups
        ]
        counts, lockstep = self._agree(
            [len(cs) for cs in per_group],
            [c.tokens for cs in per_group for c in cs],
            objective.needs_ref_logp,
        )
        self._policy.train()
        # FSDP: the references' roots (embeddings, norm, head) stay gathered until every backward has read them
        with parallel.head_gathered(self._ref_models):
            try:
                for g, group_chunks in enumerate(per_group):
                    for p in self._params:
                        p.grad = None
                    # every rank runs counts[g] passes (the most any rank has), padded with zero-loss passes; DDP
                    # all-reduces the accumulated gradients in the last one's backward, FSDP reduce-scatters each one
                    for i in range(counts[g]):
                        chunk = group_chunks[i] if i < len(group_chunks) else None
                        with parallel.accumulating(self._model, sync=i == counts[g] - 1):
                            if chunk is None or (
                                self._topology.distributed and not self._runs_collectives(chunk.tokens)
                            ):
                                self._zero_pass(lockstep)
                                if chunk is None:
                                    continue
                            stats = self._stats(
                                chunk.tokens,
                                objective.temperature,
                                objective.needs_entropy,
                                objective.needs_ref_logp,
                                step,
                                lockstep,
                            )
                            out = objective(stats, chunk)
                            if out.loss.requires_grad:
                                out.loss.backward()
                            elif self._topology.distributed and stats.logp.requires_grad:
                                # the other ranks' collectives need this pass's backward
                                (stats.logp.sum() * 0.0).backward()
                            loss_sum += out.loss.detach().to(torch.float64)
                            for name, value in out.metrics.items():
                                metric_sums[name] = metric_sums.get(name, 0.0) + float(value)
                            chunks += 1
                    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
                    norm = torch.nn.utils.clip_grad_norm_(self._params, clip, error_if_nonfinite=False)
                    norms.append(float(parallel.full(norm)))
                    if K > 1:
                        grads.append([p.grad for p in self._params])
            finally:
                self._policy.eval()
        loss = float(distributed.mean_tensor(loss_sum, self._topology))
        metrics = {k: s / max(chunks, 1) for k, s in metric_sums.items()}
        metrics = distributed.mean_over_ranks(metrics, self._topology)
        if not (math.isfinite(loss) and all(math.isfinite(n) for n in norms)):
            for p in self._params:
                p.grad = None
            return StepReport(loss=loss, grad_norms=tuple(norms), skipped=True, metrics=metrics)
        self._version += 1
        if K == 1:
            self._optimizers[0].step()
        else:
            # a group empty on every rank takes no part: its state does not step, the others' weights rescale
            flags = distributed.mean_over_ranks(
                {str(k): float(bool(g)) for k, g in enumerate(groups)}, self._topology
            )
            present = [flags[str(k)] > 0.0 for k in range(K)]
            step_averaged(self._params, grads, self._optimizers, self.context.update_weights, present=present)
        for p in self._params:
            p.grad = None
        return StepReport(loss=loss, grad_norms=tuple(norms), skipped=False, metrics=metrics)

    # -- persistence -----------------------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, /) -> None:
        checkpoint.save(
            Path(path),
            topology=self._topology,
            model=self._checkpointed(),
            optimizers=self._optimizers,
            meta=self._meta(),
            sharded=parallel.is_sharded(self._model),
        )

    def load_checkpoint(self, path: Path, /) -> None:
        self._version += 1
        checkpoint.load(
            Path(path),
            topology=self._topology,
            model=self._checkpointed(),
            optimizers=self._optimizers,
            meta=self._meta(),
            sharded=parallel.is_sharded(self._model),
        )

    def _checkpointed(self) -> Any:
        """What ``model.pt`` holds: the policy's ``state_dict``, or with LoRA the adapter weights alone (FSDP: the
        sharded root, written through DCP)."""
        if parallel.is_sharded(self._model):
            return self._model
        return self._policy if self._lora is None else self._lora.adapter_state

    def _policy_weights(self) -> dict[str, torch.Tensor]:
        """The policy's weights by their plain transformers names (with LoRA: merged, ``W₀ + (α/r)·B A``)."""
        return self._policy.state_dict() if self._lora is None else self._lora.merged_state_dict()

    def _meta(self) -> dict[str, Any]:
        cfg = self.config
        lora_meta = {} if self._lora is None else {"lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha}
        return {"dtype": self.config.dtype, **lora_meta}

    def save_pretrained(self, path: Path, /) -> None:
        path = Path(path)
        if parallel.is_sharded(self._model):  # FSDP: rank 0 gathers the full weights on CPU, tensor by tensor
            dtype = getattr(torch, self.config.dtype)  # the master weights are float32 under bfloat16
            state = parallel.full_state(self._model, rank0_only=True)
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
            if self.is_main:
                path.mkdir(parents=True, exist_ok=True)
                # a plain model over the gathered tensors (no copy): config.json then names the exported dtype
                plain = parallel.plain_copy(self._policy, state, device=torch.device("cpu"))
                with quiet_progress():
                    plain.save_pretrained(path)
                del plain
                self._tokenizer.save_pretrained(path)
            self.barrier()
            return
        if self.is_main:
            path.mkdir(parents=True, exist_ok=True)
            with quiet_progress():
                if self._lora is None:
                    self._policy.save_pretrained(path)
                else:
                    self._lora.save(path, export=self.config.lora_export)
            self._tokenizer.save_pretrained(path)
        self.barrier()
