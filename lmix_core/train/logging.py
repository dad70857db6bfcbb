"""Run outputs: ``metrics.jsonl`` (one line per step), wandb (offline by default) and the progress bar."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lmix_core.settings import LoggingConfig

_logger = logging.getLogger("lmix_core.train")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class MetricsLog:
    """Appends one JSON object per step to ``metrics.jsonl``; on resume, drops lines from steps to be redone."""

    def __init__(self, path: Path, *, resume_from: int | None) -> None:
        self.path = path
        if resume_from is not None:
            roll_back(path, lambda step: step < resume_from)
        elif path.exists():
            path.unlink()

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
            f.flush()


def roll_back(path: Path, keep: Callable[[int], bool]) -> None:
    """Keep only the lines of a per-step jsonl log whose ``step`` passes ``keep`` (rewritten atomically).

    A last line cut short by a kill (no valid JSON) is dropped; any other unreadable line raises CheckpointError.
    """
    if not path.exists():
        return
    from lmix_core.errors import CheckpointError

    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = []
    for i, ln in enumerate(lines):
        try:
            step = json.loads(ln)["step"]
        except (ValueError, KeyError, TypeError) as exc:
            if i == len(lines) - 1:
                break
            raise CheckpointError(
                f"cannot read {str(path)!r}: line {i + 1} is not a JSON object with a 'step' ({exc})"
            ) from None
        if keep(int(step)):
            kept.append(ln)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in kept))
    os.replace(tmp, path)


class Tracker:
    """wandb (``offline`` unless the recipe or ``WANDB_MODE`` says otherwise) plus the step progress.

    wandb runs silently (no banner, no run-history block at the end); one line says where its offline run is and
    how to upload it. ``WANDB_SILENT=false`` brings wandb's own output back.
    """

    def __init__(
        self, config: LoggingConfig, run_dir: Path, resolved: Mapping[str, Any], total: int, start: int
    ):
        self.run = None
        mode = os.environ.get("WANDB_MODE", config.wandb)
        if mode != "disabled":
            import wandb

            silent = os.environ.get("WANDB_SILENT", "true").lower() not in ("false", "0")
            self.run = wandb.init(
                project=config.project,
                dir=str(run_dir),
                mode=mode,  # type: ignore[arg-type]  # WANDB_MODE may hold any string: wandb checks it
                config=dict(resolved),
                reinit="finish_previous",
                settings=wandb.Settings(silent=silent),
            )
            if mode == "offline":
                where = Path(self.run.settings.sync_dir)
                print(f"lmix run: wandb logs offline; upload with: wandb sync {where}", flush=True)
            elif self.run.url:
                print(f"lmix run: wandb run {self.run.url}", flush=True)
        self.progress = None
        if config.progress:
            from lmix_core.progress_bars import StepProgress

            self.progress = StepProgress(total, start)

    def log(self, record: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.log(
                {k: v for k, v in record.items() if isinstance(v, int | float)}, step=int(record["step"])
            )
        if self.progress is not None:
            reward = record.get("reward_mean")
            self.progress.update(float(record["loss"]), None if reward is None else float(reward))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.run is not None:
            self.run.finish()


def batch_line(train: Any, replicas: int, processes: int | None = None) -> str:
    """The start line's batch: ``prompts_per_step`` is per data-parallel replica, so the global batch is the
    number of replicas times it.

    ``2 processes x 2 prompts x 4 rollouts: global batch 4 prompts, 16 completions per step; 3 steps``; with tensor
    or pipeline parallelism (``processes`` > ``replicas``, e.g. megatron with tp = 2):
    ``4 processes = 2 data-parallel replicas x 2 prompts x 4 rollouts: ...``.

    Args:
        replicas: data-parallel replicas (the backend's ``world_size``).
        processes: all processes of the job; default ``WORLD_SIZE`` from the environment (1 without torchrun).
    """
    W, Q, G = replicas, train.prompts_per_step, train.group_size
    n = int(os.environ.get("WORLD_SIZE", "1")) if processes is None else processes
    who = f"{n} process" + ("es" if n != 1 else "")
    if n != W:
        who += f" = {W} data-parallel replica" + ("s" if W != 1 else "")
    return (
        f"{who} x {Q} prompts x {G} rollouts: global batch {W * Q} prompts, {W * Q * G} completions per step; "
        f"{train.steps} steps"
    )


def quiet_other_rank() -> None:
    """Silence a process other than global rank 0: Python warnings, log records below ERROR, and the progress bars
    of transformers and datasets. Errors still print (with the rank, see ``lmix_core.cli``)."""
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["WANDB_SILENT"] = "true"


class FlatRewards:
    """Warns once when every reward of a run is the same for :attr:`STEPS` RL steps in a row.

    Identical rewards make every group-relative advantage zero, so the RL update is zero: the run "trains" at loss 0
    and learns nothing. The check reads this process's rewards only (no collective), which is what rank 0 prints.
    """

    #: RL steps in a row with one reward value before the warning.
    STEPS = 10

    def __init__(self) -> None:
        self.run_length, self.warned = 0, False
        self.value: float | None = None

    def observe(self, step: int, rewards: Any, *, main: bool) -> None:
        """Record one RL step's rewards ``[N]``; warn (on the main process) when the run of equal values is long."""
        low, high = float(rewards.min()), float(rewards.max())
        if low != high:
            self.run_length, self.value = 0, None
        elif low == self.value:
            self.run_length += 1
        else:
            self.run_length, self.value = 1, low
        if self.warned or self.run_length < self.STEPS:
            return
        self.warned = True
        if main:
            _logger.warning(
                "lmix run: every reward has been %g for %d steps in a row (through step %d), so every advantage is "
                "zero and the RL loss learns nothing. Likely causes: the completions never reach an answer the "
                "verifier accepts (too few sampling.max_new_tokens, a prompt or chat template that does not ask for "
                "the answer format), the verifier cannot read the data's answers (check with lmix eval "
                "--completions FILE), or the task is out of the model's reach (or already solved); an SFT stage "
                "or a mixer that uses demonstrations can bootstrap it.",
                low,
                self.run_length,
                step,
            )
