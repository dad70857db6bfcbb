"""Worker for test_dp_normalization.py, launched by ``torchrun --nproc_per_node 2``: one loop step per setting.

Usage: dp_norm_worker.py MODEL_DIR OUT_DIR. Rank r runs its share (:func:`dp_scenario.local_step`) through the loop's
micro-batch building once per entry of :func:`settings`; rank 0 writes the averaged gradient of every optimiser step
to ``OUT_DIR/grads.pt``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from dp_scenario import local_step, run_step
from hf_helpers import make_backend

from lmix_core.ops.aggregation import AGG_MODES


def settings() -> dict[str, dict[str, str]]:
    """Every aggregation mode with ``global`` normalisation, ``R = B`` once, and ``rank`` normalisation once."""
    out = {f"{mode}/nonempty/global": {"agg": mode} for mode in AGG_MODES}
    out["seq-mean-token-mean/all/global"] = {"agg": "seq-mean-token-mean", "agg_rows": "all"}
    out["token-mean/nonempty/rank"] = {"agg": "token-mean", "dp_normalization": "rank"}
    return out


def gradient_recorder(backend) -> Callable[[], list[torch.Tensor]]:  # noqa: ANN001
    """Record the gradient the optimiser receives (after averaging over ranks), then zero it so AdamW (no weight
    decay, zero moments) leaves the parameters exactly as they were. Returns ``capture()``."""
    seen: list[torch.Tensor] = []

    def hook(optimizer, args, kwargs) -> None:  # noqa: ANN001
        params = [p for group in optimizer.param_groups for p in group["params"]]
        seen.append(torch.cat([p.grad.detach().reshape(-1).float() for p in params]).clone())  # [P]
        for p in params:
            p.grad.zero_()

    backend._optimizers[0].register_step_pre_hook(hook)

    def capture() -> list[torch.Tensor]:
        out = list(seen)
        seen.clear()
        return out

    return capture


def main() -> None:
    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    backend = make_backend(model_dir, grad_clip=0.0, micro_batch_size=3, distributed_timeout_s=120.0)
    capture = gradient_recorder(backend)
    pad = backend.tokenizer.pad_token_id or 0
    data = local_step(backend.rank, pad)
    grads = {
        name: run_step(backend, data, out / f"rank{backend.rank}", capture, **kw)
        for name, kw in settings().items()
    }
    if backend.is_main:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(grads, out / "grads.pt")
    backend.barrier()
    backend.close()


if __name__ == "__main__":
    main()
