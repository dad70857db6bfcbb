"""torchrun worker: ``lmix run`` (``lmix_core.cli.main``) on the shipped TP2×PP2 recipe, where global rank 2 raises
at the start of step 1 while its peers go on into the step's collectives.

Rank 2 writes the time it raised to ``<out>/raised``; the test checks that the job ends soon after, with rank 2's
message and traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist


def main(args_path: str) -> int:
    args = json.loads(Path(args_path).read_text())
    from lmix_core import cli
    from lmix_core.train import loop

    original = loop.Trainer.step

    def step(self: loop.Trainer, step: int) -> dict:
        if step == 1 and dist.get_rank() == 2:
            (Path(args["out"]) / "raised").write_text(str(time.time()))
            raise RuntimeError("boom from rank 2 in step 1")
        return original(self, step)

    loop.Trainer.step = step  # type: ignore[method-assign]
    return cli.main(["run", args["recipe"], *args["overrides"], "--out", str(Path(args["out"]) / "run")])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
