"""Reward workers and their fork server ignore SIGTERM (the training process stops cleanly after its step, scoring
included), and never outlive the process that started the pool, however it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lmix_core.rewards.pool import RewardPool
from lmix_core.types import Verdict

from .pool_helpers import Scripted, samples

ROOT = Path(__file__).resolve().parents[2]


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_sigterm_to_workers_and_fork_server_does_not_change_verdicts():
    """SIGTERM sent to every worker and to the fork server while they judge: every sample keeps its verdict."""
    batch = samples("sleep:0.3", "cpu:0.1", "fine", "sleep:0.3", "cpu:0.1", "fine")
    with RewardPool(workers=2, timeout_s=2.0) as pool:
        expected = pool.score([Scripted.default()], batch)[0]
        assert all(v.score == 1.0 for v in expected)
        pids = [w.proc.pid for w in pool._pool]
        server = {_parent(pid) for pid in pids} - {os.getpid()}  # the fork server: every worker's parent

        def signal_all() -> None:
            time.sleep(0.15)  # the workers are judging by now
            for pid in [*pids, *server]:
                os.kill(pid, signal.SIGTERM)

        sender = threading.Thread(target=signal_all)
        sender.start()
        out = pool.score([Scripted.default()], batch)[0]
        sender.join()
        assert [v.score for v in out] == [v.score for v in expected]
        assert [v.reason.split()[0] for v in out] == [v.reason.split()[0] for v in expected]
        assert [w.proc.pid for w in pool._pool] == pids  # none was replaced
        assert all(_running(pid) for pid in [*pids, *server])
        assert pool.score([Scripted.default()], samples("fine")) == [[Verdict(score=1.0, reason="ok fine")]]


SCRIPT = """
import os, sys, time
from lmix_core.rewards.pool import RewardPool
from tests.rewards.pool_helpers import Scripted, samples

if __name__ == "__main__":
    pool = RewardPool(workers=2, timeout_s=60.0)
    pids = [w.proc.pid for w in pool._pool]
    print(*pids, flush=True)
    pool.score([Scripted.default()], samples("hang", "hang", "hang"))
"""


def test_killing_the_parent_leaves_no_worker_alive():
    """The process that owns a pool is SIGKILLed while its workers hang: the workers and the fork server exit."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        server = {_parent(pid) for pid in pids} - {proc.pid}
        time.sleep(1.0)  # the workers are hanging on their samples
        assert all(_running(pid) for pid in [*pids, *server])
    finally:
        proc.kill()
        proc.wait()
    end = time.monotonic() + 10
    while any(_running(pid) for pid in [*pids, *server]) and time.monotonic() < end:
        time.sleep(0.05)
    assert not [pid for pid in [*pids, *server] if _running(pid)]
