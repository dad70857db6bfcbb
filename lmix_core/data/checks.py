"""A recipe's data, read and checked before any model loads: by ``lmix validate`` and at the start of ``lmix run``.

Reading the rows finds what the recipe's types cannot: a missing file or column, a CSV or other format problem, a
prompt template naming a column the rows lack, and a mixer that trains on demonstrations given data without any
(it would "train" with loss 0 and exit 0).
"""

from __future__ import annotations

from typing import Any

import attrs

from lmix_core.data.errors import DataError
from lmix_core.data.example import Example
from lmix_core.data.loading import load_examples


@attrs.frozen(kw_only=True)
class RecipeData:
    """The examples a run trains and evaluates on.

    Attributes:
        train: the training examples (shuffled once, cut to ``data.limit``).
        eval: the held-out examples (file order, cut to ``data.eval_limit``); empty without ``data.eval``.
    """

    train: list[Example]
    eval: list[Example]


def load_recipe_data(recipe: Any) -> RecipeData:
    """Read a validated recipe's train and eval data and check that its mixer has something to learn from.

    Raises:
        DataError: whatever :func:`~lmix_core.data.loading.load_examples` raises, or a mixer that trains on
            demonstrations (its plan for step 0 includes SFT) given training data with no demonstration at all.
    """
    train = load_examples(recipe.data, "train")
    held = load_examples(recipe.data, "eval") if recipe.data.eval else []
    check_demonstrations(recipe, train)
    return RecipeData(train=train, eval=held)


def check_demonstrations(recipe: Any, train: list[Example]) -> None:
    """Raise :class:`DataError` when the mixer plans SFT at step 0 and no training example has a demonstration.

    The mixer's plan is read from a fresh instance (``recipe.mixer.build()``), so the run's own mixer state is
    untouched. ``sft``, ``chord``, ``constant`` (μ > 0), ``hpt``, ``parallel_average`` and ``sequential`` (with SFT
    steps) all plan SFT at step 0.
    """
    plan = recipe.mixer.build().plan(0)
    if not plan.sft or any(ex.demonstration for ex in train):
        return
    data = recipe.data
    if data.adapter == "none":
        where = (
            f"its data.demonstration_column {data.demonstration_column!r} is empty in every row"
            if data.demonstration_column
            else "data.demonstration_column is unset"
        )
        fix = "point data.demonstration_column at the column of worked solutions"
    else:
        where = f"the {data.adapter!r} adapter gives none for this file"
        fix = "train on a dataset with worked solutions (adapters math, gsm8k, numina_cn_k12)"
    what = "only SFT" if not plan.rollouts else "SFT on demonstrations"
    raise DataError(
        f"mixer {recipe.mixer.name!r} trains on demonstrations ({what} at step 0), but none of the "
        f"{len(train)} training examples of data.train has one ({where}), so the run would learn nothing "
        f'from them.\n  {fix}, or use a mixer that needs none: [mixer] type = "rl"'
    )
