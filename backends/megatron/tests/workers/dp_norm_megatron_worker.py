"""torchrun worker (2 processes, TP1 × PP1 × DP2, gloo, fp32): data-parallel loss normalisation.

The scenario is the HF test's (``backends/hf/tests/dp_scenario.py``: unequal response lengths, an empty row, a
dropped question, demonstrations of different lengths per rank), through the loop's micro-batch building.

Phase ``dp``: rank r trains on its share with each setting of ``SETTINGS``. Phase ``single``: both replicas train on
the whole global batch with per-rank normalisation, so each computes the one-process gradient of the global batch
and their DP average is that gradient exactly. Each optimiser step's gradient (this rank's shard of the distributed
optimizer's fp32 main gradient, after the DP reduce-scatter) is recorded, then zeroed so the parameters stay put.
Global rank 0 writes, per setting and optimiser step, the largest |Δg| over both shards and the largest |g|.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

SETTINGS: dict[str, dict[str, str]] = {
    "token-mean/global": {"agg": "token-mean"},
    "seq-mean-token-mean/global": {"agg": "seq-mean-token-mean"},
    "seq-mean-token-sum-norm/all/global": {"agg": "seq-mean-token-sum-norm", "agg_rows": "all"},
    "token-mean/rank": {"agg": "token-mean", "dp_normalization": "rank"},
}


def backend(args: dict[str, Any]) -> Any:
    from lmix_core.combiners.policy import Policy
    from lmix_core.config import build
    from lmix_core.interfaces.backend import BackendContext
    from lmix_megatron.backend import MegatronBackend

    table = {
        "model": args["policy"],
        "micro_batch_size": 3,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "grad_clip": 0.0,
        "distributed_timeout_s": 120.0,
    }
    return MegatronBackend(
        build(MegatronBackend.Config, table), BackendContext(combiner=Policy(Policy.Config()))
    )


def gradient_recorder(be: Any) -> Any:
    """Wrap the optimizer's ``prepare_grads``: record this rank's main-gradient shard, then zero it (Adam with zero
    moments and no weight decay then leaves the parameters unchanged). Returns ``capture()``."""
    opt = be.optimizer
    real = opt.prepare_grads
    seen: list[torch.Tensor] = []

    def prepare_grads() -> Any:
        found_inf = real()
        mains = be._main_params(0)
        seen.append(torch.cat([p.grad.detach().reshape(-1).float() for p in mains]).clone())  # [P / DP]
        for p in mains:
            p.grad.zero_()
        return found_inf

    opt.prepare_grads = prepare_grads

    def capture() -> list[torch.Tensor]:
        out = list(seen)
        seen.clear()
        return out

    return capture


def all_max(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


@record
def main(args_path: str) -> None:
    args = json.loads(Path(args_path).read_text())
    sys.path.insert(0, args["hf_tests"])
    from dp_scenario import global_step, local_step, run_step

    out = Path(args["out"])
    be = backend(args)
    capture = gradient_recorder(be)
    pad = be.tokenizer.pad_token_id or 0
    scratch = out / f"rank{dist.get_rank()}"
    mine, whole = local_step(be.rank, pad), global_step(pad)
    result: dict[str, Any] = {"dp": be.world_size}
    for name, kw in SETTINGS.items():
        got = run_step(be, mine, scratch, capture, **kw)
        want = run_step(be, whole, scratch, capture, **{**kw, "dp_normalization": "rank"})
        result[name] = [
            {"err": all_max(float((g - w).abs().max())), "scale": all_max(float(w.abs().max()))}
            for g, w in zip(got, want, strict=True)
        ]
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result))
    be.close()


if __name__ == "__main__":
    main(sys.argv[1])
