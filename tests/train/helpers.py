"""Recipe writer shared by the end-to-end training tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_recipe(
    path: Path, inputs: dict[str, Path], body: str = "", *, steps: int = 2, extra_train: str = ""
) -> Path:
    """A small recipe: 2 questions x 4 rollouts, 12 new tokens, wandb off; ``body`` adds component tables."""
    path.write_text(
        f"""schema = 1
[backend]
type = "hf"
model = {json.dumps(str(inputs["model"]))}
lr = 1e-3
micro_batch_size = 4
{body}
[[rewards]]
type = "math"
[[rewards]]
type = "format"
weight = 0.0
pattern = '(?s).*\\\\boxed\\{{-?[0-9]+\\}}'
[train]
steps = {steps}
prompts_per_step = 2
group_size = 4
seed = 3
{extra_train}
[sampling]
max_new_tokens = 12
[eval]
max_examples = 4
[data]
train = {json.dumps(str(inputs["train"]))}
eval = {json.dumps(str(inputs["eval"]))}
[logging]
wandb = "disabled"
progress = false
"""
    )
    return path
