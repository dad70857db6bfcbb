"""SIGTERM/SIGINT handling of the training loop: a first signal is a request, a later second one stops at once; under
torchrun every rank stops after the same step (a 2-process run where only rank 1 is signalled)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmix_core.train import stop
from lmix_core.train.stop import StopSignals, agreed
from tests.train.helpers import write_recipe


def test_first_signal_is_a_request_a_repeat_within_the_grace_is_the_same_one(monkeypatch):
    previous = signal.getsignal(signal.SIGINT)
    with StopSignals(announce=False) as signals:
        assert signals.signum == 0
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert signals.signum == signal.SIGINT  # recorded, nothing raised
        os.kill(os.getpid(), signal.SIGTERM)  # within REPEAT_GRACE_S: torchrun forwarding the same Ctrl-C
        time.sleep(0.05)
        assert signals.signum == signal.SIGINT
        monkeypatch.setattr(stop, "REPEAT_GRACE_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    assert agreed(0) == 0 and agreed(15) == 15  # not distributed: the local request


def _rank_pid(agent: int, rank: int, timeout: float = 300) -> int:
    """The pid of torchrun worker ``rank`` (a child of the agent whose environment has RANK=rank)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(child)
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank}")


@pytest.mark.distributed
def test_two_processes_stop_after_the_same_step_when_one_rank_is_signalled(tiny_run_inputs, tmp_path):
    """SIGTERM to rank 1 only: rank 0 learns of it through the per-step all-reduce, both finish the same step, one
    checkpoint holds both ranks' RNG files, and `--resume` ends like the uninterrupted 2-process run."""
    recipe = write_recipe(tmp_path / "r.toml", tiny_run_inputs, steps=4)
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lmix",
    ]

    def metrics(run: Path) -> list[dict]:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "step_time_s"} for r in rows]

    full = tmp_path / "full"
    res = subprocess.run(
        [*torchrun, "run", str(recipe), "--out", str(full)], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [*torchrun, "run", str(recipe), "--out", str(cut)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rank1 = _rank_pid(proc.pid, 1)
    deadline = time.time() + 300
    while not (cut / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(rank1, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    done = len((cut / "metrics.jsonl").read_text().splitlines())
    assert f"stopped by SIGTERM after step {done} of 4" in err, err[-3000:]
    assert done < 4
    ckpt = cut / "checkpoints" / f"step_{done:06d}"
    assert sorted(p.name for p in (ckpt / "backend").glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
    assert (cut / "checkpoints" / "latest").read_text().strip() == ckpt.name

    res = subprocess.run(
        [*torchrun, "run", str(recipe), "--out", str(cut), "--resume"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert metrics(cut) == metrics(full)
    final = [json.loads((d / "summary.json").read_text())["final_eval"] for d in (full, cut)]
    assert final[0] == final[1]
