"""Fixtures for the megatron backend tests: tiny HF model directories and a ``torchrun`` launcher.

The distributed tests each start one ``torchrun --nproc_per_node 4`` job (gloo, CPU, fp32) running a worker script
from ``workers/``; the worker writes its measurements as JSON (global rank 0) and the test asserts on them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from megatron_launch import run_torchrun

#: every 2-D weight is multiplied by this, so the tiny random models have peaked (entropy ≈ 4.8 of ln 262 ≈ 5.6)
#: next-token distributions and the parity tests compare non-trivial numbers.
WEIGHT_SCALE = 8.0

#: (name, arch, tied, seed)
MODELS = (
    ("qwen2", "qwen2", False, 1),
    ("qwen2_ref", "qwen2", False, 7),
    ("qwen2_tied", "qwen2", True, 2),
    ("llama", "llama", False, 3),
    ("llama_tied", "llama", True, 4),
    ("qwen3", "qwen3", False, 5),
    ("qwen3_tied", "qwen3", True, 6),
)


def _save_model(directory: Path, arch: str, tied: bool, seed: int) -> None:
    from lmix_core.testing.tiny import build_tiny_model, build_tokenizer

    tok = build_tokenizer()
    model = build_tiny_model(tok, arch=arch, tie_word_embeddings=tied, seed=seed)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(WEIGHT_SCALE)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """HF directories of the tiny Llama/Qwen2/Qwen3 models (tied and untied), by name."""
    root = tmp_path_factory.mktemp("megatron_models")
    out = {}
    for name, arch, tied, seed in MODELS:
        _save_model(root / name, arch, tied, seed)
        out[name] = root / name
    return out


@pytest.fixture()
def torchrun(tmp_path: Path) -> Callable[..., Any]:
    """``torchrun(worker, args)`` → the worker's JSON result; fails the test with the log on a non-zero exit."""

    def run(worker: str, args: dict[str, Any], **kw: Any) -> Any:
        code, result, log, _ = run_torchrun(worker, args, tmp_path / "run", **kw)
        if code != 0 or result is None:
            pytest.fail(f"torchrun {worker} exited with {code}:\n{log[-6000:]}")
        return result

    return run
