"""SIGTERM and SIGINT stop a run cleanly: the current step finishes, a checkpoint is written, the process exits.

Clusters send SIGTERM before they kill a job, and Ctrl-C sends SIGINT. While :class:`StopSignals` is active (the
training loop), the first of either signal only records a request; the loop checks it after every step (after that
step's evaluation and periodic checkpoint, if due), writes a checkpoint unless one was just written, and raises
:class:`~lmix_core.errors.RunInterrupted`. A second signal exits at once: SIGINT raises ``KeyboardInterrupt``,
SIGTERM ends the process with the default action. A second signal that arrives within :data:`REPEAT_GRACE_S` of
the first counts as the same request: ``torchrun`` forwards the signal it receives to its workers, which under a
terminal's Ctrl-C or a scheduler that signals every process already got it.

Under ``torch.distributed`` every rank calls :func:`agreed` after every step: the largest signal number over all
ranks (0: none), so every rank stops after the same step and saves the same checkpoint even when only some of them
were signalled.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import torch

#: Seconds after the first signal during which a repeated one is taken for the same request.
REPEAT_GRACE_S = 2.0
#: The signals that request a clean stop.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager that turns SIGTERM/SIGINT into a stop request (see the module docstring).

    Args:
        announce: print one line on stderr when the first signal arrives (the main rank).
    """

    def __init__(self, *, announce: bool) -> None:
        self.announce = announce
        self.signum = 0
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self._first_at = signum, now
            if self.announce:
                name = signal.Signals(signum).name
                os.write(
                    2,
                    f"\nlmix run: {name} received: finishing this step, then writing a checkpoint "
                    f"(send it again to stop at once)\n".encode(),
                )
            return
        if now - self._first_at < REPEAT_GRACE_S:
            return
        signal.signal(signum, signal.SIG_DFL)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)


def agreed(signum: int) -> int:
    """The largest of every rank's ``signum`` (0: no rank was signalled); ``signum`` itself when not distributed."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return signum
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    t = torch.tensor([signum], dtype=torch.int64, device=device)  # [1]
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
