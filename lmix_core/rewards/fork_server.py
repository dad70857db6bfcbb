"""Signal set-up for the fork server that starts reward workers; imported only through its preload list.

A scheduler that stops a job may send SIGTERM to every process in it, not just to the training process, which then
finishes its step and writes a checkpoint (:mod:`lmix_core.train.stop`). Reward workers ignore SIGTERM themselves
(:mod:`lmix_core.rewards.pool`), but each one is a child of the fork server and is killed when the fork server dies
(``PR_SET_PDEATHSIG``): so the fork server ignores SIGTERM too. It still goes away with the training process: it exits
when the pipe from that process closes, and SIGKILL still works.

Importing this module changes signal handling only when the fork server's preload is what imports it. Other
children of the same fork server (another library's forkserver processes) get the default SIGTERM action back as
they are forked, so ``Process.terminate()`` keeps working for them; reward workers turn it off again as they start.
"""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing import forkserver
from types import FrameType


def _imported_by_fork_server() -> bool:
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


if _imported_by_fork_server():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
