"""Run a worker script of this folder under ``torchrun`` on two CPU (gloo) processes (test helper)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def torchrun_two_ranks(worker: str, *args: str | Path, timeout: float = 600) -> None:
    """Run ``torchrun --standalone --nproc_per_node 2 <this folder>/<worker> <args>``, one thread per process, with
    this folder on ``PYTHONPATH`` (the worker imports the tests' helper modules); the test fails with the end of
    its stderr when the job exits non-zero. The worker writes its results into a folder named in ``args``."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(HERE / worker), *map(str, args),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
