"""benchmarks/compare_hf.py (the HF-versus-megatron accuracy comparison): its two recipes differ only in
``[backend]``, keep the demo recipe's optimiser settings, and validate. The runs themselves are the lead's to make
(docs/megatron.md); test_megatron_recipe.py runs the same megatron command line on a tiny model."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_hf.py"


@pytest.fixture(scope="module")
def compare_hf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_hf", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipes_differ_only_in_the_backend(compare_hf: ModuleType, tmp_path: Path) -> None:
    from lmix_core.recipe import load_recipe

    paths = compare_hf.write_recipes(tmp_path, tp=2, pp=2)
    hf, mg = (tomllib.loads(paths[k].read_text()) for k in ("hf", "megatron"))
    assert hf == tomllib.loads(compare_hf.HF_RECIPE.read_text())
    assert {k: v for k, v in mg.items() if k not in ("backend", "description")} == {
        k: v for k, v in hf.items() if k not in ("backend", "description")
    }
    assert (mg["backend"]["type"], mg["backend"]["tp"], mg["backend"]["pp"]) == ("megatron", 2, 2)
    for key in compare_hf.SHARED_BACKEND_KEYS:
        assert mg["backend"].get(key) == hf["backend"].get(key), key
    for path in paths.values():
        load_recipe(path, ())  # raises RecipeError on any problem


def test_difference_and_noise(compare_hf: ModuleType) -> None:
    """One seed: binomial standard errors; several: the spread over seeds."""
    one = compare_hf.compare({"hf": [{"pass@1": 0.40, "n": 200}], "megatron": [{"pass@1": 0.37, "n": 200}]})
    assert one["difference"] == pytest.approx(-0.03)
    assert one["se_difference"] == pytest.approx((0.4 * 0.6 / 200 + 0.37 * 0.63 / 200) ** 0.5)
    assert one["within_noise"]
    seeds = compare_hf.compare(
        {
            "hf": [{"pass@1": p, "n": 200} for p in (0.40, 0.42, 0.41)],
            "megatron": [{"pass@1": p, "n": 200} for p in (0.20, 0.21, 0.22)],
        }
    )
    assert seeds["backends"]["hf"]["se_kind"] == "spread over 3 seeds"
    assert not seeds["within_noise"]
