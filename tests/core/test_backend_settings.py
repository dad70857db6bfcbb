"""The settings every backend shares: one definition in both built-in backends, and keys of earlier versions."""

from __future__ import annotations

import attrs
import pytest

from lmix_core.backend_settings import BackendSettings
from lmix_core.errors import RecipeError
from lmix_core.recipe import recipe_from_mapping
from lmix_core.registries import backends


def recipe(backend: dict) -> dict:
    return {
        "schema": 1,
        "backend": backend,
        "rewards": [{"type": "math"}],
        "train": {"steps": 1},
        "data": {"train": "t.jsonl"},
    }


@pytest.mark.parametrize("name", ["hf", "megatron"])
def test_both_backends_extend_the_shared_settings(name):
    """Each built-in backend's Config is a BackendSettings, so the shared keys are the same fields in both."""
    config = backends.get(name).Config
    assert issubclass(config, BackendSettings)
    shared = {f.name: f for f in attrs.fields(BackendSettings)}
    assert {f.name: f for f in attrs.fields(config) if f.name in shared} == shared


def test_renamed_keys_of_saved_recipes_still_read():
    """A saved hf recipe's ``gradient_checkpointing`` reads as ``recompute``; megatron's ``logits_chunk_tokens = 0``
    (one chunk) as a chunk larger than any batch; a key given under both names is refused."""
    hf = recipe_from_mapping(
        recipe({"type": "hf", "model": "m", "gradient_checkpointing": True}), source="hf"
    )
    assert hf.backend.config.recompute == "full"
    off = recipe_from_mapping(
        recipe({"type": "hf", "model": "m", "gradient_checkpointing": False}), source="hf"
    )
    assert off.backend.config.recompute == "none"
    mega = recipe_from_mapping(
        recipe({"type": "megatron", "model": "m", "logits_chunk_tokens": 0}), source="m"
    )
    assert mega.backend.config.logprob_chunk_size == 2**31 - 1
    mega = recipe_from_mapping(
        recipe({"type": "megatron", "model": "m", "logits_chunk_tokens": 64}), source="m"
    )
    assert mega.backend.config.logprob_chunk_size == 64
    with pytest.raises(RecipeError, match="has no parameter 'gradient_checkpointing'"):
        recipe_from_mapping(
            recipe({"type": "hf", "model": "m", "gradient_checkpointing": True, "recompute": "none"}),
            source="x",
        )


def test_decay_span_is_checked_across_fields():
    """``total_steps`` must exceed ``warmup_steps`` for a decaying schedule, in either backend's Config."""
    with pytest.raises(RecipeError, match="'total_steps' must exceed 'warmup_steps' \\(5\\)"):
        recipe_from_mapping(
            recipe(
                {
                    "type": "megatron",
                    "model": "m",
                    "lr_schedule": "cosine",
                    "warmup_steps": 5,
                    "total_steps": 5,
                }
            ),
            source="x",
        )
