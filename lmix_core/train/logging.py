"""Run outputs: ``metrics.jsonl`` (one line per step), wandb (offline by default) and the progress bar."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmix_core.settings import LoggingConfig


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class MetricsLog:
    """Appends one JSON object per step to ``metrics.jsonl``; on resume, drops lines from steps to be redone."""

    def __init__(self, path: Path, *, resume_from: int | None) -> None:
        self.path = path
        if resume_from is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] < resume_from]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, path)
        elif resume_from is None and path.exists():
            path.unlink()

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
            f.flush()


class Tracker:
    """wandb (``offline`` unless the recipe or ``WANDB_MODE`` says otherwise) plus a tqdm progress bar."""

    def __init__(
        self, config: LoggingConfig, run_dir: Path, resolved: Mapping[str, Any], total: int, start: int
    ):
        self.run = None
        mode = os.environ.get("WANDB_MODE", config.wandb)
        if mode != "disabled":
            import wandb

            self.run = wandb.init(
                project=config.project,
                dir=str(run_dir),
                mode=mode,
                config=dict(resolved),
                reinit="finish_previous",
            )
        self.bar = None
        if config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="lmix", unit="step", dynamic_ncols=True)

    def log(self, record: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.log(
                {k: v for k, v in record.items() if isinstance(v, int | float)}, step=int(record["step"])
            )
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                reward=f"{record.get('reward_mean', float('nan')):.3f}", loss=f"{record['loss']:.4f}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.run is not None:
            self.run.finish()
