"""Worker for test_dp_advantages.py, launched by ``torchrun --nproc_per_node 2``: each rank computes the
advantages of its share of :func:`batch` (whole groups) with the HF backend's ``all_sum``.

Usage: dp_advantage_worker.py MODEL_DIR OUT_DIR; rank r writes ``OUT_DIR/rank{r}.pt``: ``{label: [n_r, S]}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hf_helpers import make_backend

from lmix_core.registries import advantages
from lmix_core.types import AdvantageInputs

#: Estimators whose statistics span the batch, ``label -> (name, Config parameters)``.
ESTIMATORS = {
    "grpo/batch": ("grpo", {"scale": "batch"}),
    "reinforce_pp": ("reinforce_pp", {}),
    "bnpo": ("bnpo", {}),
}


def batch() -> AdvantageInputs:
    """6 questions × 4 rollouts with uneven lengths and one NaN reward."""
    rewards = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0.5, 0, 1, float("nan"), 1, 1, 1, 1, 0, 0.75, 0.5, 0.25]
    lengths = [3, 5, 2, 7, 4, 4, 1, 6, 2, 2, 3, 8, 5, 5, 5, 1, 7, 3, 2, 4, 6, 1, 3, 2]
    mask = torch.arange(8)[None, :] < torch.tensor(lengths)[:, None]  # [N, S]
    return AdvantageInputs(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_ids=torch.arange(6).repeat_interleave(4),
        mask=mask,
    )


def rows(rank: int) -> torch.Tensor:
    """Rank 0 holds questions 0-1, rank 1 questions 2-5."""
    ids = batch().group_ids
    return ids < 2 if rank == 0 else ids >= 2


def estimate(label: str, inputs: AdvantageInputs) -> torch.Tensor:
    name, params = ESTIMATORS[label]
    cls = advantages.get(name)
    return cls(cls.Config(**params))(inputs)


def main() -> None:
    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    backend = make_backend(model_dir, distributed_timeout_s=120.0)
    whole, mine = batch(), rows(backend.rank)
    share = AdvantageInputs(
        rewards=whole.rewards[mine],
        group_ids=whole.group_ids[mine],
        mask=whole.mask[mine],
        all_sum=backend.all_sum,
    )
    torch.save({label: estimate(label, share) for label in ESTIMATORS}, out / f"rank{backend.rank}.pt")
    backend.close()


if __name__ == "__main__":
    main()
