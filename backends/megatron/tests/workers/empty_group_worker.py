"""torchrun worker (2 processes, DP2, fp32): two optimiser states (``parallel_average``) when a group is empty.

Scenario ``absent``: no rank has an SFT micro-batch, so the RL update is applied at full weight and the SFT state
does not step. Scenario ``one_rank``: only rank 1 has one, so the SFT state is present (the gradient is the DP mean,
rank 0 contributing 0) and the weights stay (0.3, 0.7). Each is compared on rank 0 with plain HF + torch AdamW.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

LR = 1e-3
WEIGHT_DECAY = 0.1
ADAM_EPS = 1e-6
W = (0.3, 0.7)


class Objective:
    """``−Σ w·logp`` at temperature 1."""

    needs_entropy = False
    needs_ref_logp = False
    temperature = 1.0

    def __call__(self, stats: Any, batch: Any) -> Any:
        from lmix_core.types import LossOutput

        return LossOutput(loss=-(batch.tensors["token_weights"] * stats.logp).sum())


def rows(seed: int) -> tuple[Any, torch.Tensor]:
    """Four full rows of 8 tokens (rank r takes rows 2r, 2r+1) and their token weights."""
    from lmix_core.types import TokenBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 250, (4, 8), generator=g)
    am = torch.ones(4, 8, dtype=torch.long)
    batch = TokenBatch(input_ids=ids, attention_mask=am, loss_mask=am.bool(), distribution="policy")
    return batch, torch.rand(4, 8, generator=g)


def hf_grad(policy: Any, batch: Any, w: torch.Tensor) -> list[torch.Tensor]:
    """∇ of ``−Σ w·logp`` (the token at position t scored from positions < t, position 0 not scored)."""
    policy.zero_grad()
    z = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [N, S, V]
    lp = torch.log_softmax(z[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]  # [N, S-1]
    (-(w[:, 1:] * lp).sum()).backward()
    return [p.grad.clone() for p in policy.parameters()]


def adamw_delta(policy_dir: str, grad: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ after one torch AdamW step (decay on matrices) from the initial weights with ``grad``."""
    import transformers

    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_dir)
    params = list(policy.parameters())
    for p, g in zip(params, grad, strict=True):
        p.grad = g.clone()
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
        lr=LR,
        eps=ADAM_EPS,
    ).step()
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def scenario(policy_dir: str, name: str) -> dict[str, Any]:
    from lmix_core.config import build
    from lmix_core.interfaces.backend import BackendContext
    from lmix_core.registries import combiners
    from lmix_core.types import MicroBatch
    from lmix_megatron.backend import MegatronBackend

    rank = dist.get_rank()
    rl, w_rl = rows(1)
    sft, w_sft = rows(2)
    mine = slice(2 * rank, 2 * rank + 2)
    groups: list[list[Any]] = [
        [MicroBatch(tokens=rl.select(mine), role="rl", tensors={"token_weights": w_rl[mine]})]
    ]
    has_sft = name == "one_rank" and rank == 1
    groups.append(
        [MicroBatch(tokens=sft.select(mine), role="sft", tensors={"token_weights": w_sft[mine]})]
        if has_sft
        else []
    )
    policy = combiners.get("policy")
    table = {
        "model": policy_dir,
        "tp": 1,
        "pp": 1,
        "micro_batch_size": 2,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "grad_clip": 0.0,
        "adam_eps": ADAM_EPS,
    }
    context = BackendContext(combiner=policy(policy.Config()), num_optimizer_states=2, update_weights=W)
    be = MegatronBackend(build(MegatronBackend.Config, table), context)
    be.train_step(groups, Objective(), step=0)
    states = [len(getattr(o, "chained_optimizers", [o])[0].optimizer.state) for o in be.optimizers]
    exported = be._export()
    be.close()
    if rank != 0:
        return {}
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(policy_dir)
    theta = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    g_rl = [
        0.5 * (a + b)
        for a, b in zip(
            hf_grad(hf, rl.select(slice(0, 2)), w_rl[0:2]),
            hf_grad(hf, rl.select(slice(2, 4)), w_rl[2:4]),
            strict=True,
        )
    ]
    after_rl = adamw_delta(policy_dir, g_rl)
    if name == "absent":
        expect = after_rl  # full weight
    else:
        g_sft = [0.5 * g for g in hf_grad(hf, sft.select(slice(2, 4)), w_sft[2:4])]  # rank 0 contributes 0
        after_sft = adamw_delta(policy_dir, g_sft)
        expect = {
            k: theta[k] + W[0] * (after_rl[k] - theta[k]) + W[1] * (after_sft[k] - theta[k]) for k in theta
        }
    diff = max(float((exported[k].double() - v.double()).abs().max()) for k, v in expect.items())
    moved = max(float((after_rl[k].double() - theta[k].double()).abs().max()) for k in theta)
    return {"weights": diff, "moved": moved, "optimizer_states": states}


@record
def main(args_path: str) -> None:
    args = json.loads(Path(args_path).read_text())
    dist.init_process_group("gloo")
    result = {name: scenario(args["policy"], name) for name in ("absent", "one_rank")}
    if dist.get_rank() == 0:
        (Path(args["out"]) / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
