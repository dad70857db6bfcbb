"""Resharded resume, the distributed optimizer's checkpoint-loading fixes, and the HF export (4 gloo processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from megatron_launch import run_torchrun

pytestmark = [pytest.mark.megatron, pytest.mark.distributed]


@pytest.fixture(scope="module")
def resume(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("resume")
    args = {"policy": tiny_models["qwen2_tied"], "ref": tiny_models["qwen2_tied"]}
    code, result, log, _ = run_torchrun("resume_worker.py", args, out)
    if code != 0 or result is None:
        pytest.fail(f"resume worker exited with {code}:\n{log[-6000:]}")
    return result


def test_resharded_resume_continues_like_the_uninterrupted_run(resume: dict[str, Any]) -> None:
    """Saved at TP2×PP2 after step 0 and resumed at TP1×PP1: steps 1-2 give the same losses, grad norms and
    weights as the uninterrupted TP2×PP2 run (to float rounding: TP changes the order of the sums; lr 1e-3)."""
    for a, b in zip(resume["a"], resume["b"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-6, abs=1e-6)
    assert resume["weights_a_vs_b"] <= 1e-5


def test_adam_step_counters_survive_resume(resume: dict[str, Any]) -> None:
    """After loading a checkpoint taken after 1 step, every parameter's Adam step is 1; after 2 more steps, 3."""
    assert resume["b_adam_steps_loaded"] == [1.0]
    assert resume["b_adam_steps"] == [3.0]


def test_loading_into_a_fresh_optimizer_needs_fix_1(resume: dict[str, Any]) -> None:
    """Without priming, DistributedOptimizer.state_dict() asserts on a fresh torch AdamW (no 'step' yet)."""
    assert resume["bugs"]["no_fix1"]["error"].startswith("AssertionError")


def test_copying_states_needs_fix_2(resume: dict[str, Any]) -> None:
    """Without fix 2, loading the fully reshardable state fails with KeyError: 'step'."""
    error = resume["bugs"]["no_fix2"]["error"]  # lmix reports it as a CheckpointError naming the directory
    assert error.startswith("CheckpointError") and "KeyError: 'step'" in error


def test_shared_step_tensor_corrupts_bias_correction_without_fix_3(resume: dict[str, Any]) -> None:
    """Without fix 3 every parameter shares one 'step' tensor: one AdamW step moves it from 1 to 1 + n_params
    (Adam's bias correction then uses the wrong step); with all fixes it moves to 2 for every parameter."""
    broken = resume["bugs"]["no_fix3"]
    assert broken["shared_step"] is True
    assert broken["steps_after_one_step"] == [1.0 + broken["n_states"]]
    fixed = resume["bugs"]["all_fixes"]
    assert fixed["shared_step"] is False
    assert fixed["steps_after_one_step"] == [2.0]


def test_bucket_padding_shift_needs_fix_4(resume: dict[str, Any]) -> None:
    """A tied model's last stage has two gradient buckets under PP: megatron's fully reshardable state reads the
    second bucket's main params shifted by the first bucket's padding; fix 4 reads them exactly."""
    assert resume["bucket_padding"]["unfixed"] > 1e-3
    assert resume["bucket_padding"]["fixed"] == 0.0


def test_two_optimizer_states_resume_resharded(resume: dict[str, Any]) -> None:
    """With two optimiser states (parallel_average) a TP2×PP2 checkpoint resumes at TP1×PP1 like the
    uninterrupted run (each state's Adam moments are saved under their own keys)."""
    r = resume["two_states"]
    assert r["loss"] <= 1e-4  # a loss of ~80 to float rounding across layouts
    assert r["grad_norms"] <= 1e-4
    assert r["weights"] <= 1e-5


def test_save_pretrained_writes_a_loadable_hf_model(resume: dict[str, Any]) -> None:
    """save_pretrained writes an HF directory (tokenizer included) whose weights equal the exported ones."""
    assert resume["saved_vs_exported"] == 0.0
    assert resume["saved_has_tokenizer"] is True
