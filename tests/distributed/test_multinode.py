"""Multi-node rehearsal on one machine: two torchrun agents as two "nodes" (``--nnodes 2``, c10d rendezvous on
127.0.0.1, 2 processes each) run ``lmix run`` into one output directory, and their metrics equal the single-node
4-process run's. This catches confusions of global and local rank (node 1's local ranks 0-1 are global ranks
2-3), per-node file-system assumptions (each node runs from its own working and temporary directory) and writes
that must come from global rank 0 only. What it cannot catch (NCCL, network interfaces, a shared file system
across hosts, clock skew) is listed in docs/multi-node.md.

Runs: the HF backend (DDP on one node as the reference; DDP and FSDP on two nodes) and the megatron backend at
TP2 × DP2 (one node and two nodes), 2 tiny steps each of the demo's logit-averaging recipe with the
``parallel_average`` mixer.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: metrics that are not functions of the data and weights
TIMING = {"step_time_s"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's data files and an untrained tiny base model (``lmix demo``'s inputs, seed 0)."""
    from lmix_core.demo.command import build_inputs

    return build_inputs(tmp_path_factory.mktemp("inputs"), 0)


def overrides(inputs: dict[str, Path], backend: dict[str, Any]) -> list[str]:
    """Tiny settings for 2 steps on 4 processes (1 prompt per data-parallel replica). The mixer is
    ``parallel_average`` (an SFT and an RL update from two optimiser states): the untrained model earns no reward,
    so the SFT half is what moves the weights and makes step 1 depend on step 0's averaged gradients."""
    return [
        f"backend.model={json.dumps(str(inputs['base']))}",
        *(f"backend.{k}={json.dumps(v)}" for k, v in backend.items()),
        'mixer.type="parallel_average"',
        f"data.train={json.dumps(str(inputs['train']))}",
        f"data.eval={json.dumps(str(inputs['eval']))}",
        "train.steps=2",
        "train.prompts_per_step=1",
        "train.group_size=4",
        "sampling.max_new_tokens=6",
        "eval.max_examples=2",
        'logging.wandb="disabled"',
        "logging.progress=false",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(recipe: str, args: list[str], out: Path, *, nodes: int) -> list[subprocess.CompletedProcess]:
    """``lmix run`` on 4 processes: one torchrun (``--standalone``) or ``nodes`` torchrun agents of
    ``4 / nodes`` processes each, started together, each in its own working and temporary directory."""
    lmix = ["-m", "lmix", "run", recipe, *args, "--out", str(out)]
    rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", out.name]
    procs, temporary = [], []
    for node in range(nodes):
        home = out.parent / f"{out.name}.node{node}"
        home.mkdir()
        # a short path: sockets are bound in TMPDIR (AF_UNIX paths are limited to 108 bytes)
        tmp = tempfile.mkdtemp(prefix=f"lmix-node{node}-", dir="/tmp" if Path("/tmp").is_dir() else None)
        temporary.append(tmp)
        where = ["--standalone"] if nodes == 1 else ["--nnodes", str(nodes), "--node-rank", str(node), *rdzv]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *where,
            "--nproc_per_node",
            str(4 // nodes),
            *lmix,
        ]
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            PYTHONWARNINGS="ignore",
            TOKENIZERS_PARALLELISM="false",
            TMPDIR=tmp,
        )
        procs.append(
            subprocess.Popen(
                cmd, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    done = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for tmp in temporary:
            shutil.rmtree(tmp, ignore_errors=True)
    for node, d in enumerate(done):
        assert d.returncode == 0, f"node {node}:\n" + (d.stdout + d.stderr)[-5000:]
    return done


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(got: Path, want: Path, tol: float) -> None:
    a, b = metrics(got), metrics(want)
    assert [m["step"] for m in a] == [m["step"] for m in b] == [0, 1]
    assert all(m["grad_norm"] > 0.1 for m in b), "the rehearsal must train (a zero gradient compares nothing)"
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x.keys() - TIMING:
            if isinstance(y[k], float):
                assert x[k] == pytest.approx(y[k], abs=tol), (x["step"], k)
            else:
                assert x[k] == y[k], (x["step"], k)
    assert json.loads((got / "summary.json").read_text())["steps"] == 2
    assert (got / "model" / "config.json").is_file()


def assert_rank0_prints(done: list[subprocess.CompletedProcess]) -> None:
    """Only global rank 0 (on node 0) prints the run's lines."""
    assert done[0].stdout.count("lmix run: done in") == 1
    assert all("lmix run:" not in d.stdout for d in done[1:])


def test_hf_two_nodes_equal_one_node(inputs: dict[str, Path], tmp_path: Path) -> None:
    """HF backend, 4 ranks: DDP on 2 nodes × 2 equals DDP on 1 node × 4 (1e-6), FSDP on 2 nodes × 2 equals it
    within 1e-5; both write one run directory with one checkpoint and one exported model."""
    recipe = "demo:grpo_logit_average"
    base = {"device": "cpu", "micro_batch_size": 4}
    one = tmp_path / "one_node"
    launch(recipe, overrides(inputs, {**base, "parallel": "ddp"}), one, nodes=1)
    for parallel, tol in (("ddp", 1e-6), ("fsdp", 1e-5)):
        two = tmp_path / f"two_nodes_{parallel}"
        done = launch(recipe, overrides(inputs, {**base, "parallel": parallel}), two, nodes=2)
        assert_rank0_prints(done)
        assert_same_run(two, one, tol)
        steps = sorted(p.name for p in (two / "checkpoints").iterdir() if p.name.startswith("step_"))
        assert steps == ["step_000002"]
        assert sorted(p.name for p in (two / "checkpoints" / steps[0] / "backend").glob("rng_rank*.pt")) == [
            f"rng_rank{r}.pt" for r in range(4)
        ]


@pytest.mark.megatron
def test_megatron_tp2_dp2_two_nodes_equal_one_node(inputs: dict[str, Path], tmp_path: Path) -> None:
    """megatron backend, TP2 × DP2: 2 nodes × 2 processes (each node one tensor-parallel pair) equal 1 node × 4
    within 1e-6."""
    pytest.importorskip("megatron.core")
    recipe = str(ROOT / "recipes" / "megatron_tiny_tp2_pp2.toml")
    args = overrides(inputs, {"tp": 2, "pp": 1, "micro_batch_size": 4})
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    launch(recipe, args, one, nodes=1)
    done = launch(recipe, args, two, nodes=2)
    assert_rank0_prints(done)
    assert_same_run(two, one, 1e-6)
