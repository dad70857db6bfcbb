"""Fixtures for end-to-end training tests: a tiny model directory and task data."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmix_core.demo.task import generate, write_jsonl
from lmix_core.synthetic.model import save_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_run_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    model = save_tiny_model_dir(
        root / "model", arch="qwen2", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2
    )
    train = write_jsonl(root / "train.jsonl", generate(64, levels=(1,), seed=0))
    held = write_jsonl(root / "eval.jsonl", generate(8, levels=(1,), seed=0, split="test"))
    return {"model": model, "train": train, "eval": held, "root": root}
