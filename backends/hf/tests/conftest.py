"""Shared fixtures: tiny model directories (hidden 32-64, 2 layers) built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmix_core.testing.tiny import build_tokenizer, save_tiny_model_dir


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``policy`` and ``reference`` (Qwen2, different seeds), ``llama``, ``qwen3`` and ``tied`` (Qwen2 with a
    tied head)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "policy": save_tiny_model_dir(root / "policy", arch="qwen2", hidden_size=64, seed=1),
        "reference": save_tiny_model_dir(root / "reference", arch="qwen2", hidden_size=64, seed=2),
        "llama": save_tiny_model_dir(root / "llama", arch="llama", hidden_size=32, seed=3),
        "qwen3": save_tiny_model_dir(root / "qwen3", arch="qwen3", hidden_size=32, seed=4),
        "tied": save_tiny_model_dir(
            root / "tied", arch="qwen2", hidden_size=32, seed=5, tie_word_embeddings=True
        ),
    }
