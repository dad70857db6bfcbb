"""Progress output: hiding transformers' per-call progress bars (loading and writing shards), which would drown a
run's own output, and the run's own step progress (:class:`StepProgress`)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from typing import TextIO


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Turn transformers' progress bars off inside the block, and back on after it if they were on."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class StepProgress:
    """The training progress: a tqdm bar on a terminal, plain lines otherwise (a log file, a cluster's output).

    On a terminal each step updates the bar once (its reward and loss with it); the bar closes as the last training
    step is counted, so evaluation and export print their own lines after it. When stderr is not a terminal, each
    shown step is one line, written once (no carriage returns): every step up to :data:`MAX_LINES` steps, else every
    ``ceil(total / MAX_LINES)``-th step, and always the first and the last.

    Args:
        total: the run's number of steps.
        start: steps already done (a resumed run).
        stream: where to write (default ``sys.stderr``).
    """

    #: Most lines a run writes when its stream is not a terminal.
    MAX_LINES = 100

    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None) -> None:
        self.total, self.done = total, start
        self.stream = sys.stderr if stream is None else stream
        self.every = max(1, math.ceil(total / self.MAX_LINES))
        self.first = start + 1
        self.t0 = time.perf_counter()
        self.bar = None
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=start, desc="lmix", unit="step", dynamic_ncols=True, file=self.stream
            )

    def update(self, loss: float, reward: float | None) -> None:
        """Count one finished step with its loss and mean reward (``None``: the step sampled nothing)."""
        self.done += 1
        shown = {"loss": f"{loss:.4f}"} | ({} if reward is None else {"reward": f"{reward:.3f}"})
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
            if self.done >= self.total:
                self.close()
            return
        if self.done in (self.first, self.total) or self.done % self.every == 0:
            rate = (time.perf_counter() - self.t0) / (self.done - self.first + 1)
            eta = rate * (self.total - self.done)
            values = "  ".join(f"{k} {v}" for k, v in shown.items())
            print(
                f"lmix: step {self.done}/{self.total}  {values}  {rate:.2f} s/step  eta {eta:.0f}s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
