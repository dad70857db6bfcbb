"""HF ⇄ Megatron conversion: exact round trips for Llama, Qwen2 and Qwen3 (tied and untied) at several TP/PP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from megatron_launch import run_torchrun

pytestmark = [pytest.mark.megatron, pytest.mark.distributed]

NAMES = ["qwen2", "qwen2_tied", "llama", "llama_tied", "qwen3", "qwen3_tied"]


@pytest.fixture(scope="module")
def round_trips(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("convert")
    code, result, log, _ = run_torchrun(
        "convert_worker.py", {"models": {k: str(v) for k, v in tiny_models.items()}}, out
    )
    if code != 0 or result is None:
        pytest.fail(f"convert worker exited with {code}:\n{log[-6000:]}")
    return result


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_exact(round_trips: dict[str, Any], name: str) -> None:
    """HF → megatron (layout A) → HF (layout B) reproduces every tensor bit for bit, the config and tokenizer."""
    r = round_trips[name]
    assert r["same_names"] and r["exact"], r
    assert r["config_same"]
    assert r["tokenizer"]


@pytest.mark.parametrize("name", NAMES)
def test_converted_checkpoint_scores_like_hf(round_trips: dict[str, Any], name: str) -> None:
    """The megatron checkpoint, loaded by the backend at layout B, gives the HF model's log-probs within 1e-5."""
    assert round_trips[name]["logp"] <= 1e-5


@pytest.mark.slow
def test_command_line_round_trip(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """``python -m lmix_megatron.convert`` relaunches itself under torchrun for tp·pp > 1 and round-trips exactly."""
    from lmix_megatron.convert import HFWeights

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    src, mcore, back = tiny_models["llama_tied"], tmp_path / "mcore", tmp_path / "hf"
    base = [sys.executable, "-m", "lmix_megatron.convert"]
    first = subprocess.run(
        [*base, "hf2mcore", str(src), str(mcore), "--tp", "2", "--pp", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-4000:]
    second = subprocess.run(
        [*base, "mcore2hf", str(mcore), str(back)], env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-4000:]
    original, written = HFWeights(src), HFWeights(back)
    assert original.names() == written.names()
    import torch

    assert all(torch.equal(original.get(k), written.get(k)) for k in original.names())


def test_command_line_reports_a_bad_source(tmp_path: Path) -> None:
    """A source that is not an HF model directory exits with status 2 and a message naming the folder."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmix_megatron.convert",
            "hf2mcore",
            str(tmp_path / "nope"),
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "config.json" in proc.stderr
