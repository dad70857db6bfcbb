"""Worker for test_distributed.py, launched by ``torchrun --nproc_per_node 2``: two data-parallel steps.

Usage: ddp_worker.py MODEL_DIR OUT_DIR. Rank r trains on rows [2r, 2r + 2) of four deterministic rollouts, with
loss weights normalised over its own rows (DDP convention); rank 0 writes the parameters and reports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from hf_helpers import WeightedNLL, make_backend, micro_batch, prompts

from lmix_core.types import GenerationRequest


def shard_batches(backend, rank: int):
    """Four greedy rollouts (identical on every rank); rank ``rank``'s two rows as one micro-batch."""
    gen = backend.generate(
        GenerationRequest(prompt_ids=prompts(backend.tokenizer, 4), max_new_tokens=6, temperature=0.0)
    )
    return micro_batch(gen.tokens.select(slice(2 * rank, 2 * rank + 2)))


def main() -> None:
    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    backend = make_backend(model_dir, num_references=1, lr=1e-2, adam_eps=1.0, micro_batch_size=1)
    mb = shard_batches(backend, backend.rank)
    objective = WeightedNLL(needs_ref_logp=True, kl_coef=0.3)
    reports = [backend.train_step([[mb]], objective, step=s) for s in range(2)]
    means = backend.all_mean({"rank": float(backend.rank), "one": 1.0})
    backend.save_checkpoint(out / "ckpt")
    backend.barrier()
    info = {
        "rank": backend.rank,
        "world_size": backend.world_size,
        "is_main": backend.is_main,
        "means": means,
        "reports": [
            {"loss": r.loss, "grad_norms": list(r.grad_norms), "skipped": r.skipped} for r in reports
        ],
    }
    (out / f"rank{backend.rank}.json").write_text(json.dumps(info))
    if backend.is_main:
        torch.save({k: v.detach() for k, v in backend.policy.named_parameters()}, out / "params.pt")
    backend.close()


if __name__ == "__main__":
    main()
