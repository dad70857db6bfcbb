"""torchrun worker: log-prob, entropy, mixing, sampling and training-step parity with plain HF + torch AdamW.

Run by ``test_parity.py`` under ``torchrun --nproc_per_node 4`` (gloo, fp32). Global rank 0 writes
``result.json`` with the largest absolute differences measured.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

TEMPERATURE = 0.7
ALPHA = 0.5
LR = 1e-4
WEIGHT_DECAY = 0.1
GRAD_CLIP = 0.5
#: Adam's first step is ``lr · g / (|g| + ε)``: with ε = 1e-8 a gradient that is 0 in exact arithmetic (the key bias:
#: softmax ignores a shift of every score) but ~1e-9 in floating point moves its weight by ~0.1·lr on both sides,
#: at random. ε = 1e-6 damps that amplified rounding noise; real gradients here are ~1e-3 and above.
ADAM_EPS = 1e-6
ENT_COEF = 0.05
KL_COEF = 0.1


def make_batch() -> Any:
    """Five rows: left padding, right padding, full rows; a random loss mask."""
    from lmix_core.types import TokenBatch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 250, (5, 11), generator=g)
    am = torch.ones(5, 11, dtype=torch.long)
    am[0, :3] = 0
    am[1, 7:] = 0
    am[3, :1] = 0
    am[4, 8:] = 0
    lm = (torch.rand(5, 11, generator=g) > 0.3) & am.bool()
    weights = torch.rand(5, 11, generator=g) * lm
    return TokenBatch(input_ids=ids * am, attention_mask=am, loss_mask=lm), weights


class Objective:
    """``−Σ w·logp − c_H Σ w·H + c_KL Σ w·(logp − ref_logp)²``: touches every statistic a loss can use."""

    needs_entropy = True
    needs_ref_logp = True
    temperature = TEMPERATURE

    def __call__(self, stats: Any, batch: Any) -> Any:
        from lmix_core.types import LossOutput

        w = batch.tensors["token_weights"]
        loss = (
            -(w * stats.logp).sum()
            - ENT_COEF * (w * stats.entropy).sum()
            + KL_COEF * (w * (stats.logp - stats.ref_logp) ** 2).sum()
        )
        return LossOutput(loss=loss, metrics={"ent": (w * stats.entropy).sum().detach()})


class LogSoftmaxSum:
    """A combiner whose mix is *not* vocab-local: ``log_softmax(z_θ) + log_softmax(z_ref)``."""

    num_references = 1

    def mix_logits(self, z: torch.Tensor, refs: Sequence[torch.Tensor], *, step: int = 0) -> torch.Tensor:
        return torch.log_softmax(z, -1) + torch.log_softmax(refs[0].detach(), -1)


def hf_stats(policy: Any, ref: Any, batch: Any, mix: Any) -> tuple[torch.Tensor, ...]:
    """Reference per-token (logp, entropy, ref_logp) ``[N, S]`` from full HF logits (positions = cumsum − 1)."""
    am = batch.attention_mask
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    z = policy(input_ids=batch.input_ids, attention_mask=am, position_ids=pos).logits  # [N, S, V]
    with torch.no_grad():
        zr = ref(input_ids=batch.input_ids, attention_mask=am, position_ids=pos).logits  # [N, S, V]
    zm = (z if mix is None else mix(z, [zr])) / TEMPERATURE  # [N, S, V]
    lq = torch.log_softmax(zm, -1)  # [N, S, V]
    tgt = batch.input_ids[:, 1:, None]  # [N, S-1, 1]
    m = batch.loss_mask.clone()
    m[:, 0] = False
    m[:, 1:] &= am[:, :-1].bool()  # a token is scored only when it has a real predecessor
    m = m.float()
    n, s = batch.input_ids.shape
    lp = torch.zeros(n, s)
    lp[:, 1:] = lq[:, :-1].gather(-1, tgt).squeeze(-1)
    ent = torch.zeros(n, s)
    ent[:, 1:] = -(lq.exp() * lq).sum(-1)[:, :-1]
    rl = torch.zeros(n, s)
    rl[:, 1:] = torch.log_softmax(zr / TEMPERATURE, -1)[:, :-1].gather(-1, tgt).squeeze(-1)
    return lp * m, ent * m, rl * m


def hf_train_step(policy_dir: str, ref_dir: str, batch: Any, weights: torch.Tensor) -> dict[str, Any]:
    """One step of the objective on plain HF models with torch AdamW (decay on matrices) and norm clipping."""
    import transformers

    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_dir).train()
    ref = transformers.AutoModelForCausalLM.from_pretrained(ref_dir).eval()
    mix = lambda z, zr: ALPHA * z + (1 - ALPHA) * zr[0].detach()
    lp, ent, rl = hf_stats(policy, ref, batch, mix)
    loss = (
        -(weights * lp).sum() - ENT_COEF * (weights * ent).sum() + KL_COEF * (weights * (lp - rl) ** 2).sum()
    )
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), GRAD_CLIP)
    decay = [p for p in policy.parameters() if p.dim() >= 2]
    rest = [p for p in policy.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
        lr=LR,
        eps=ADAM_EPS,
    )
    opt.step()
    return {"loss": float(loss), "grad_norm": float(grad_norm), "weights": dict(policy.state_dict())}


def second_batch(batch: Any, weights: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """The rows of ``make_batch`` in reverse order with other token weights (a second micro-batch group)."""
    import attrs

    g = torch.Generator().manual_seed(5)
    flipped = attrs.evolve(
        batch,
        input_ids=batch.input_ids.flip(0),
        attention_mask=batch.attention_mask.flip(0),
        loss_mask=batch.loss_mask.flip(0),
    )
    return flipped, (torch.rand(batch.input_ids.shape, generator=g) * batch.loss_mask).flip(0)


def hf_parallel_average(policy_dir: str, ref_dir: str, groups: Any, update_weights: Any) -> dict[str, Any]:
    """Two AdamW states stepping from one snapshot, each on its own group's (clipped) gradient, averaged with
    ``lmix_core.ops.update_average.step_averaged`` (what the HF backend does)."""
    import transformers

    from lmix_core.ops.update_average import step_averaged

    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_dir).train()
    ref = transformers.AutoModelForCausalLM.from_pretrained(ref_dir).eval()
    params = list(policy.parameters())
    mix = lambda z, zr: ALPHA * z + (1 - ALPHA) * zr[0].detach()
    opts, grads, norms, total = [], [], [], 0.0
    for batch, w in groups:
        policy.zero_grad()
        lp, ent, rl = hf_stats(policy, ref, batch, mix)
        loss = -(w * lp).sum() - ENT_COEF * (w * ent).sum() + KL_COEF * (w * (lp - rl) ** 2).sum()
        loss.backward()
        total += float(loss)
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)))
        grads.append([p.grad.clone() for p in params])
        decay = [p for p in params if p.dim() >= 2]
        rest = [p for p in params if p.dim() < 2]
        groups_ = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]
        opts.append(torch.optim.AdamW(groups_, lr=LR, eps=ADAM_EPS))
    step_averaged(params, grads, opts, update_weights)
    return {"loss": total, "grad_norms": norms, "weights": dict(policy.state_dict())}


def parallel_average_check(
    policy_dir: str, ref_dir: str, combiner: Any, batch: Any, weights: Any
) -> dict[str, Any]:
    """Two optimiser states (the ``parallel_average`` mixer) at TP2×PP2 vs :func:`hf_parallel_average`."""
    from lmix_core.config import build
    from lmix_core.interfaces.backend import BackendContext
    from lmix_core.types import MicroBatch
    from lmix_megatron.backend import MegatronBackend

    b2, w2 = second_batch(batch, weights)
    groups = [
        [MicroBatch(tokens=batch, role="rl", tensors={"token_weights": weights})],
        [MicroBatch(tokens=b2, role="sft", tensors={"token_weights": w2})],
    ]
    table = {
        "model": policy_dir,
        "references": [ref_dir],
        "tp": 2,
        "pp": 2,
        "micro_batch_size": 2,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "grad_clip": GRAD_CLIP,
        "adam_eps": ADAM_EPS,
    }
    context = BackendContext(
        combiner=combiner, num_references=1, num_optimizer_states=2, update_weights=(0.3, 0.7)
    )
    be = MegatronBackend(build(MegatronBackend.Config, table), context)
    report = be.train_step(groups, Objective(), step=0)
    exported = be._export()
    be.close()
    if dist.get_rank() != 0:
        return {}
    expect = hf_parallel_average(policy_dir, ref_dir, [(batch, weights), (b2, w2)], (0.3, 0.7))
    return {
        "loss": abs(report.loss - expect["loss"]),
        "grad_norms": max(abs(a - b) for a, b in zip(report.grad_norms, expect["grad_norms"], strict=True)),
        "weights": max(maxdiff(exported[k], v) for k, v in expect["weights"].items()),
    }


def build_backend(model: str, ref: str, tp: int, pp: int, combiner: Any, **extra: Any) -> Any:
    from lmix_core.config import build
    from lmix_core.interfaces.backend import BackendContext
    from lmix_megatron.backend import MegatronBackend

    table = {
        "model": model,
        "references": [ref],
        "tp": tp,
        "pp": pp,
        "micro_batch_size": 2,  # 3 pipeline micro-batches for 5 rows
        "logprob_chunk_size": 7,  # several output-layer chunks, recomputed in backward
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "grad_clip": GRAD_CLIP,
        "adam_eps": ADAM_EPS,
        "distributed_timeout_s": 300.0,
        **extra,
    }
    return MegatronBackend(
        build(MegatronBackend.Config, table), BackendContext(combiner=combiner, num_references=1)
    )


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def vocab_parallel_checks() -> dict[str, float]:
    """At the current TP size: vocab-parallel logp/entropy values and gradients vs the full-vocabulary formula."""
    from megatron.core import parallel_state as ps

    from lmix_megatron import vocab_parallel

    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    g = torch.Generator().manual_seed(11)
    z_full = torch.randn(6, 10, generator=g, dtype=torch.float64) * 3  # [T, V]
    target = torch.randint(0, 10, (6,), generator=g)  # [T]
    up_lp, up_h = torch.randn(6, generator=g), torch.randn(6, generator=g)  # [T], [T]
    zf = z_full.float().clone().requires_grad_(True)
    lq = torch.log_softmax(zf, -1)  # [T, V]
    ref_lp = lq.gather(-1, target[:, None]).squeeze(-1)  # [T]
    ref_h = -(lq.exp() * lq).sum(-1)  # [T]
    (ref_lp * up_lp + ref_h * up_h).sum().backward()
    shard = z_full.float().chunk(tp, -1)[rank].clone().requires_grad_(True)  # [T, V/TP]
    lp = vocab_parallel.log_probs(shard, target)  # [T]
    h = vocab_parallel.entropy(shard)  # [T]
    (lp * up_lp + h * up_h).sum().backward()
    return {
        "vp_logp": maxdiff(lp, ref_lp),
        "vp_entropy": maxdiff(h, ref_h),
        "vp_grad": maxdiff(shard.grad, zf.grad.chunk(tp, -1)[rank]),
    }


def main(args_path: str) -> None:
    args = json.loads(Path(args_path).read_text())
    dist.init_process_group("gloo")
    import transformers

    from lmix_core.config import build
    from lmix_core.registries import combiners
    from lmix_core.types import GenerationRequest, MicroBatch
    from lmix_hf.sampler import Sampler

    policy_dir, ref_dir = args["policy"], args["ref"]
    la = combiners.get("logit_average")
    combiner = la(build(la.Config, {"alpha": ALPHA}))
    batch, weights = make_batch()
    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    ref = transformers.AutoModelForCausalLM.from_pretrained(ref_dir).eval()
    with torch.no_grad():
        expect_policy = hf_stats(policy, ref, batch, None)
        expect_mixed = hf_stats(policy, ref, batch, partial(combiner.mix_logits, step=0))
        nonlocal_mix = LogSoftmaxSum()
        expect_nonlocal = hf_stats(policy, ref, batch, nonlocal_mix.mix_logits)
    result: dict[str, Any] = {"layouts": {}}
    for tp, pp in ((2, 2), (1, 2), (2, 1)):
        be = build_backend(policy_dir, ref_dir, tp, pp, combiner)
        r: dict[str, float] = {}
        st = be.score(batch, temperature=TEMPERATURE, entropy=True, ref_logp=True)
        r["combined_logp"] = maxdiff(st.logp, expect_mixed[0])
        r["combined_entropy"] = maxdiff(st.entropy, expect_mixed[1])
        r["ref_logp"] = maxdiff(st.ref_logp, expect_mixed[2])
        import attrs

        sp = be.score(attrs.evolve(batch, distribution="policy"), temperature=TEMPERATURE, entropy=True)
        r["policy_logp"] = maxdiff(sp.logp, expect_policy[0])
        r["policy_entropy"] = maxdiff(sp.entropy, expect_policy[1])
        if tp == 2:
            r.update(vocab_parallel_checks())
        if (tp, pp) == (2, 2):
            tok = be.tokenizer
            prompts = tuple(
                tuple(tok(t, add_special_tokens=False)["input_ids"])
                for t in ("12+3=", "hi", "a longer prompt")
            )
            req = GenerationRequest(
                prompt_ids=prompts, forced=((), (5, 6), ()), max_new_tokens=6, temperature=0.8, seed=3
            )
            gen = be.generate(req)
            sampled = Sampler(tok).sample(req, policy, [ref], partial(combiner.mix_logits, step=0))
            r["same_tokens"] = float(torch.equal(sampled.generation.tokens.input_ids, gen.tokens.input_ids))
            rescored = be.score(gen.tokens, temperature=0.8)
            r["sampler_logp"] = maxdiff(rescored.logp, sampled.logp)
        if pp == 2:
            passes = be.reference_passes
            report = be.train_step(
                [[MicroBatch(tokens=batch, role="rl", tensors={"token_weights": weights})]],
                Objective(),
                step=0,
            )
            exported = be._export()
            if dist.get_rank() == 0:
                expect = hf_train_step(policy_dir, ref_dir, batch, weights)
                r["train_loss"] = abs(report.loss - expect["loss"])
                r["train_grad_norm"] = abs(report.grad_norms[0] - expect["grad_norm"])
                r["train_weights"] = max(maxdiff(exported[k], v) for k, v in expect["weights"].items())
                original = transformers.AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
                r["train_update_size"] = max(maxdiff(original[k], v) for k, v in expect["weights"].items())
                r["train_skipped"] = float(report.skipped)
                r["train_reference_passes"] = float(be.reference_passes - passes)
        be.close()
        result["layouts"][f"tp{tp}pp{pp}"] = r
    expect_step = hf_train_step(policy_dir, ref_dir, batch, weights) if dist.get_rank() == 0 else None
    for name, extra in (("sp", {"sequence_parallel": True}), ("bf16", {"dtype": "bfloat16"})):
        be = build_backend(policy_dir, ref_dir, 2, 2, combiner, **extra)
        st = be.score(batch, temperature=TEMPERATURE, entropy=True, ref_logp=True)
        mb = MicroBatch(tokens=batch, role="rl", tensors={"token_weights": weights})
        report = be.train_step([[mb]], Objective(), step=0)
        exported = be._export()
        if dist.get_rank() == 0:
            scored = expect_mixed[0] != 0
            result[f"tp2pp2_{name}"] = {
                "combined_logp": maxdiff(st.logp, expect_mixed[0]),
                "combined_entropy": maxdiff(st.entropy, expect_mixed[1]),
                "combined_logp_relative": float(
                    (st.logp - expect_mixed[0]).abs()[scored].mean() / expect_mixed[0].abs()[scored].mean()
                ),
                "combined_entropy_relative": float(
                    (st.entropy - expect_mixed[1]).abs()[scored].mean() / expect_mixed[1].abs()[scored].mean()
                ),
                "train_loss": abs(report.loss - expect_step["loss"]),
                "train_loss_relative": abs(report.loss - expect_step["loss"]) / abs(expect_step["loss"]),
                "train_weights": max(maxdiff(exported[k], v) for k, v in expect_step["weights"].items()),
            }
        be.close()
    result["parallel_average"] = parallel_average_check(policy_dir, ref_dir, combiner, batch, weights)
    be = build_backend(policy_dir, ref_dir, 2, 2, nonlocal_mix_combiner(nonlocal_mix), vocab_mix="auto")
    st = be.score(batch, temperature=TEMPERATURE, entropy=True)
    result["nonlocal_logp"] = maxdiff(st.logp, expect_nonlocal[0])
    result["nonlocal_entropy"] = maxdiff(st.entropy, expect_nonlocal[1])
    be.close()
    be = build_backend(policy_dir, ref_dir, 2, 1, nonlocal_mix_combiner(nonlocal_mix), vocab_mix="shard")
    try:
        be.score(batch, temperature=TEMPERATURE)
        result["shard_refused"] = ""
    except Exception as exc:  # noqa: BLE001 - the message is the result
        result["shard_refused"] = f"{type(exc).__name__}: {exc}"
    be.close()
    if dist.get_rank() == 0:
        (Path(args["out"]) / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def nonlocal_mix_combiner(mix: LogSoftmaxSum) -> Any:
    """A registered-style combiner object around :class:`LogSoftmaxSum` (the backend only calls its interface)."""
    import attrs

    from lmix_core.interfaces.combiner import PolicyCombiner

    class NonLocal(PolicyCombiner):
        @attrs.frozen
        class Config:
            pass

        @property
        def num_references(self) -> int:
            return 1

        def mix_logits(self, z: torch.Tensor, refs: Sequence[torch.Tensor], *, step: int = 0) -> torch.Tensor:
            return mix.mix_logits(z, refs, step=step)

    return NonLocal(NonLocal.Config())


if __name__ == "__main__":
    main(sys.argv[1])
