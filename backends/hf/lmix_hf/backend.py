"""The Hugging Face transformers backend: small runs, tests and the demo, data-parallel under ``torchrun``."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, final

import attrs
import torch
from attrs import validators as v

from lmix_core.backend_settings import BackendSettings
from lmix_core.errors import BackendError
from lmix_core.interfaces.backend import BackendContext, Objective, TrainerBackend
from lmix_core.interfaces.rollout_engine import EngineContext, SharedModels
from lmix_core.ops.update_average import step_averaged
from lmix_core.types import Generation, GenerationRequest, MicroBatch, StepReport, TokenBatch, TokenStats
from lmix_hf import checkpoint, distributed
from lmix_hf.loading import head_weight, load_causal_lm, load_tokenizer, model_dir, quiet_progress
from lmix_hf.lr_schedule import lr_at
from lmix_hf.micro_batches import split_rows
from lmix_hf.sampler import Sample
from lmix_hf.token_stats import token_stats


@final
class HFBackend(TrainerBackend):
    r"""Trains a local transformers causal LM with AdamW; samples through the run's rollout engine.

    Models: the policy is loaded from ``model`` (with its tokenizer and chat template); ``context.num_references``
    frozen references (eval mode, no gradient, no optimiser state) are loaded from ``references`` in order, the
    missing ones from ``model`` again (the initial, e.g. SFT, model). ``combiner.mix_logits`` reads the first
    ``combiner.num_references`` of them; a KL penalty's ``ref_logp`` is the first reference alone.

    Step: every micro-batch is split into chunks of ``micro_batch_size`` rows; each chunk is forwarded with
    gradient, scored with ``lmix_core.ops.mixed_logprobs.mixed_token_stats`` (logp, entropy, ref_logp at the
    objective's temperature), passed to the objective and back-propagated; gradients add up over chunks (the
    loop's loss weights are precomputed for the whole step). Under ``torchrun`` the gradients are then averaged
    over ranks (DDP's convention; the loop's weights normalise by the global batch's counts times the world size,
    so the average is the global batch's gradient: ``train.dp_normalization``). The pre-clip norm is reported,
    the gradient clipped to ``grad_clip`` and AdamW steps at ``lr_at(lr_step)`` (the optimiser-step count; the combiner's mix reads the loop ``step``). With two optimiser
    states (``parallel_average``), group ``k`` goes through AdamW state ``k``
    and ``lmix_core.ops.update_average.step_averaged`` sets ``θ ← θ̄ + Σ_k w_k Δ_k`` (a group empty on every rank
    takes no part: its state does not step and the other weights are rescaled to the same total). A non-finite loss or
    gradient norm leaves every parameter and optimiser state untouched and returns ``skipped=True``.

    Seeding: construction seeds torch's global generator with ``context.seed + rank`` (dropout, if the model
    has any); checkpoints save and restore it.

    AdamW follows ``torch.optim.AdamW``; weight decay applies to matrices (``ndim ≥ 2``) only, not to biases and
    norm gains (the transformers Trainer convention). ``bfloat16`` keeps parameters and optimiser moments in
    bf16 (pure bf16 training); log-probs are computed in float32 chunk by chunk. Dropout follows the model config
    (training forwards run in train mode, scoring and sampling in eval mode).
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
            distributed_timeout_s: collective timeout under torchrun.
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
        distributed_timeout_s: float = attrs.field(default=1800.0, validator=v.gt(0.0))

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
        self._topology = distributed.setup(device=config.device, timeout_s=config.distributed_timeout_s)
        torch.manual_seed(context.seed + self._topology.rank)
        device = self._topology.device
        self._tokenizer = load_tokenizer(policy_dir)
        self._policy = load_causal_lm(
            policy_dir, dtype=config.dtype, attn_implementation=config.attn_implementation, device=device
        )
        self._policy.eval()
        if config.recompute == "full":
            self._policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._references = []
        for k, ref_dir in enumerate(ref_dirs):
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
        """The reference models and mix function of a distribution (``policy``: none)."""
        if distribution == "policy":
            return [], None
        combiner = self.context.combiner
        return self._references[: combiner.num_references], functools.partial(combiner.mix_logits, step=step)

    @property
    def engine(self) -> Any:
        """The :class:`~lmix_core.interfaces.rollout_engine.RolloutEngine` this backend samples through."""
        return self._engine

    def sample(self, request: GenerationRequest, /) -> Sample:
        """Like :meth:`generate`, also returning the sampled tokens' log-probs under the sampling distribution."""
        return Sample(generation=self.generate(request))

    def generate(self, request: GenerationRequest, /) -> Generation:
        if self._engine_version != self._version:  # the weight-sync point: once after each update
            engine = self._engine
            engine.load_policy_weights(self._policy.state_dict() if engine.needs_weights else None)
            self._engine_version = self._version
        self._policy.eval()
        return self._engine.generate(request)

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
        with torch.no_grad():
            parts = [
                self._stats(batch.select(slice(start, start + size)), temperature, entropy, ref_logp, step)
                for start in range(0, max(n, 1), size)
            ]

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values).cpu()

        return TokenStats(logp=cat("logp"), entropy=cat("entropy"), ref_logp=cat("ref_logp"))

    def _stats(
        self, batch: TokenBatch, temperature: float, entropy: bool, ref_logp: bool, step: int
    ) -> TokenStats:
        refs, mix = self._mixing(batch.distribution, step)
        return token_stats(
            batch,
            policy=self._policy,
            mix_refs=refs,
            mix=mix,
            kl_ref=self._references[0] if ref_logp else None,
            temperature=temperature,
            entropy=entropy,
            chunk_size=self.config.logprob_chunk_size or None,
            device=self.device,
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
        K = self.context.num_optimizer_states
        if len(groups) != K:
            raise BackendError(
                f"train_step got {len(groups)} micro-batch group(s) for {K} optimiser state(s)"
            )
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
        self._policy.train()
        try:
            for group in groups:
                for p in self._params:
                    p.grad = None
                for mb in group:
                    for chunk in split_rows(mb, cfg.micro_batch_size, self.device):
                        stats = self._stats(
                            chunk.tokens,
                            objective.temperature,
                            objective.needs_entropy,
                            objective.needs_ref_logp,
                            step,
                        )
                        out = objective(stats, chunk)
                        if out.loss.requires_grad:
                            out.loss.backward()
                        loss_sum += out.loss.detach().to(torch.float64)
                        for name, value in out.metrics.items():
                            metric_sums[name] = metric_sums.get(name, 0.0) + float(value)
                        chunks += 1
                distributed.average_gradients(self._params, self._topology)
                clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
                norm = torch.nn.utils.clip_grad_norm_(self._params, clip, error_if_nonfinite=False)
                norms.append(float(norm))
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
            model=self._policy,
            optimizers=self._optimizers,
            meta=self._meta(),
        )

    def load_checkpoint(self, path: Path, /) -> None:
        self._version += 1
        checkpoint.load(
            Path(path),
            topology=self._topology,
            model=self._policy,
            optimizers=self._optimizers,
            meta=self._meta(),
        )

    def _meta(self) -> dict[str, Any]:
        return {"dtype": self.config.dtype}

    def save_pretrained(self, path: Path, /) -> None:
        path = Path(path)
        if self.is_main:
            path.mkdir(parents=True, exist_ok=True)
            with quiet_progress():
                self._policy.save_pretrained(path)
            self._tokenizer.save_pretrained(path)
        self.barrier()
