"""``benchmarks/gpu_check.py --dry``: the GPU check's code path at tiny sizes on the CPU, one JSON summary."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from lmix_hf.backend import HFBackend

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def test_dry_run_prints_one_summary_with_every_section(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--out", str(tmp_path / "summary.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = json.loads(lines[-1])  # the summary is the last line printed
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    sections = summary["sections"]
    assert proc.returncode == 0 and summary["status"] == "ok", json.dumps(sections, indent=1)[-3000:]
    assert summary["environment"]["dry"] is True and summary["environment"]["peak_tflops"] is None

    grpo = sections["grpo_logit_average"]
    assert grpo["steps"] == 2 and grpo["losses_finite"] and grpo["skipped_steps"] == 0
    assert len(grpo["train_step_s"]) == 2 and len(grpo["generate_s"]) >= 2
    assert grpo["train_tokens_per_s"] > 0 and grpo["mfu"] is None  # no peak FLOP/s known for a CPU
    # model FLOPs: 6N per token for the policy's forward and backward, 2N for the reference's forward
    expected = 8 * sections["model"]["parameters"] * grpo["train_tokens_per_s"] / 1e12
    assert grpo["achieved_tflops"] == pytest.approx(expected, rel=1e-3)

    samp = sections["sampling"]
    for kind in ("single", "mixed", "hf_generate"):
        assert 0 < samp[kind]["tokens"] <= samp["rows"] * samp["max_new_tokens"]
        assert samp[kind]["tokens_per_s"] > 0

    expect_fsdp = "parallel" in {f.name for f in attrs.fields(HFBackend.Config)}
    assert sections["fsdp_one_rank"]["status"] == ("ok" if expect_fsdp else "skipped")
    has_megatron = importlib.util.find_spec("megatron") is not None
    assert sections["megatron_tp1"]["status"] == ("ok" if has_megatron else "skipped")
    has_peft = importlib.util.find_spec("peft") is not None
    assert sections["lora_mixed_sampling"]["status"] == ("ok" if has_peft else "skipped")
    assert all(math.isfinite(x) for x in _numbers(sections))
