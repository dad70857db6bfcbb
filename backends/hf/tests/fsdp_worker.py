"""Worker for test_fsdp.py, launched by ``torchrun --nproc_per_node 2``: the FSDP scenario, a checkpoint and a resume.

Usage: fsdp_worker.py POLICY_DIR REFERENCE_DIR OUT_DIR PARALLEL (``fsdp`` or ``ddp``). One launch checks several
things: five steps of ``fsdp_scenario`` with a checkpoint after the third; a second backend in the same processes
loads that checkpoint and takes steps 4 and 5 again; both export the policy as an HF directory; score() with
unequal row counts. Rank 0 writes ``result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from fsdp_scenario import STEPS, backend, rollouts, train


def is_shard(p: torch.Tensor) -> bool:
    """Whether ``p`` is a DTensor (a shard)."""
    return hasattr(p, "to_local")


def main() -> None:
    policy, reference, out = (Path(a) for a in sys.argv[1:4])
    parallel = sys.argv[4]
    b = backend(policy, reference, parallel=parallel)
    rank, world = b.rank, b.world_size
    local = {
        f"{who}.{name}": (
            type(p).__name__,
            tuple(p.shape),
            tuple(p.to_local().shape if is_shard(p) else p.shape),
        )
        for who, model in (("policy", b.policy), ("reference", b.references[0]))
        for name, p in list(model.named_parameters())[:2]
    }
    tokens = rollouts(b)
    first = train(b, tokens, (rank,), 1.0, range(3))
    b.save_checkpoint(out / "ckpt")
    rest = train(b, tokens, (rank,), 1.0, range(3, STEPS))
    b.save_pretrained(out / "model")
    mine = tokens.select(slice(0, 3) if rank == 0 else slice(3, 4))  # unequal score() passes per rank
    scored = b.score(mine, entropy=True, ref_logp=True)

    resumed = backend(policy, reference, parallel=parallel)
    resumed.load_checkpoint(out / "ckpt")
    again = train(resumed, tokens, (rank,), 1.0, range(3, STEPS))
    resumed.save_pretrained(out / "model_resumed")

    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, {"logp": scored.logp, "entropy": scored.entropy})
    if rank == 0:
        result = {
            "world_size": world,
            "local": local,
            "tokens": tokens.input_ids.tolist(),
            "reports": first + rest,
            "resumed": again,
        }
        (out / "result.json").write_text(json.dumps(result))
        both = {k: torch.cat([g[k] for g in gathered]) for k in ("logp", "entropy")}
        torch.save(both, out / "scored.pt")
    resumed.close()
    b.close()


if __name__ == "__main__":
    main()
