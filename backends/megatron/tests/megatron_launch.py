"""Start a ``torchrun`` job on a worker script of ``workers/`` and collect its JSON result (test helper)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORKERS = Path(__file__).parent / "workers"


def run_torchrun(
    worker: str, args: dict[str, Any], out_dir: Path, *, nproc: int = 4, timeout: float = 600
) -> Any:
    """Run ``workers/<worker>`` under torchrun; returns ``(exit code, result or None, output, seconds)``.

    ``args`` is written as JSON and its path passed to the worker, which writes ``result.json`` into ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "args.json").write_text(json.dumps({**args, "out": str(out_dir)}, default=str))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(WORKERS / worker),
        str(out_dir / "args.json"),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=out_dir)
    elapsed = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    result_path = out_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    return proc.returncode, result, log, elapsed
