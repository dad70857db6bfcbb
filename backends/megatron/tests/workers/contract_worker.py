"""torchrun worker (2 processes, DP2, fp32): the megatron backend runs the backend contract suite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record


@record
def main(args_path: str) -> None:
    from lmix_core.config import build
    from lmix_core.testing.backend import BACKEND_CHECKS, check_backend
    from lmix_megatron.backend import MegatronBackend

    args = json.loads(Path(args_path).read_text())
    dist.init_process_group("gloo")
    table = {
        "model": args["policy"],
        "references": [args["reference"]],
        "tp": 1,
        "pp": 1,
        "lr": 1e-3,
        "micro_batch_size": 2,
    }
    check_backend(
        lambda context: MegatronBackend(build(MegatronBackend.Config, table), context),
        tmp_dir=Path(args["out"]),
    )
    if dist.get_rank() == 0:
        (Path(args["out"]) / "result.json").write_text(json.dumps({"passed": list(BACKEND_CHECKS)}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
