"""Non-finite steps are skipped and logged; repeated ones abort with a checkpoint and a clear message."""

from __future__ import annotations

import json

import pytest

from lmix_core.errors import NonFiniteError
from lmix_core.recipe import load_recipe
from lmix_core.train.run import train
from tests.train.helpers import write_recipe


def test_exploding_learning_rate_aborts_with_checkpoint(tiny_run_inputs, tmp_path):
    """lr=1e30 blows the weights up; later steps are skipped, then the run stops with NonFiniteError."""
    sft = '[mixer]\ntype = "sft"\n'  # a gradient every step, whatever the rewards
    recipe = write_recipe(tmp_path / "r.toml", tiny_run_inputs, sft, steps=8, extra_train="max_nonfinite = 2")
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="consecutive steps had a non-finite"):
        train(load_recipe(recipe, ("backend.lr=1e30",)), out, quiet=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["skipped"] for r in rows)
    assert (out / "checkpoints" / "latest").exists()
