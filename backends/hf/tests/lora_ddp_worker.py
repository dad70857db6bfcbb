"""Worker for test_lora.py's data-parallel test, launched by ``torchrun --nproc_per_node 2``: two LoRA steps.

Usage: lora_ddp_worker.py MODEL_DIR OUT_DIR. Rank r trains on rows [2r, 2r + 2) of four deterministic rollouts
(``ddp_worker.shard_batches``) with a logit-averaging LoRA policy and a KL term to its adapter-free reference; every
rank writes its adapters and reports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from ddp_worker import shard_batches
from hf_helpers import WeightedNLL
from test_lora import lora_backend


def main() -> None:
    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    backend = lora_backend(model_dir, lr=1e-2, adam_eps=1.0, micro_batch_size=1)
    mb = shard_batches(backend, backend.rank)
    objective = WeightedNLL(needs_ref_logp=True, kl_coef=0.3)
    reports = [backend.train_step([[mb]], objective, step=s) for s in range(2)]
    info = [{"loss": r.loss, "grad_norms": list(r.grad_norms), "skipped": r.skipped} for r in reports]
    (out / f"rank{backend.rank}.json").write_text(json.dumps(info))
    adapters = {k: v.detach() for k, v in backend.policy.named_parameters() if v.requires_grad}
    torch.save(adapters, out / f"adapters{backend.rank}.pt")
    backend.close()


if __name__ == "__main__":
    main()
