"""torchrun worker: one rank fails (raises, or hangs) in the middle of a TP2×PP2 training step.

``mode = "raise"``: global rank 2 (last pipeline stage, TP rank 0) raises inside the loss while its TP peer waits in
an all-reduce and the first stage waits for gradients; torchrun must end the job with rank 2's message.
``mode = "hang"``: rank 2 sleeps instead; its peers' collectives must time out after ``distributed_timeout_s``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record


class Failing:
    needs_entropy = False
    needs_ref_logp = False
    temperature = 1.0

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, stats: Any, batch: Any) -> Any:
        from lmix_core.types import LossOutput

        if dist.get_rank() == 2:
            if self.mode == "raise":
                raise ValueError("boom from rank 2: the objective failed")
            time.sleep(600)
        return LossOutput(loss=-(batch.tensors["token_weights"] * stats.logp).sum())


@record
def main(args_path: str) -> None:
    args = json.loads(Path(args_path).read_text())
    from lmix_core.config import build
    from lmix_core.interfaces.backend import BackendContext
    from lmix_core.registries import combiners
    from lmix_core.types import MicroBatch, TokenBatch
    from lmix_megatron.backend import MegatronBackend

    policy = combiners.get("policy")
    cfg = build(
        MegatronBackend.Config,
        {"model": args["policy"], "tp": 2, "pp": 2, "distributed_timeout_s": float(args["timeout_s"])},
    )
    be = MegatronBackend(cfg, BackendContext(combiner=policy(policy.Config())))
    ids = torch.randint(3, 250, (2, 8))
    tokens = TokenBatch(
        input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones_like(ids).bool()
    )
    mb = MicroBatch(tokens=tokens, role="rl", tensors={"token_weights": torch.ones(2, 8)})
    dist.barrier()
    if dist.get_rank() == 0:
        (Path(args["out"]) / "started").write_text(str(time.time()))
    be.train_step([[mb]], Failing(args["mode"]), step=0)
    be.close()


if __name__ == "__main__":
    main(sys.argv[1])
