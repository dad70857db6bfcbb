"""`lmix demo` end to end at a micro size: every stage runs, the table prints, summary.json and the plot exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmix_core.demo import command


def test_demo_runs_every_stage_and_writes_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = command.run_demo(
        tmp_path,
        seed=3,
        wandb="disabled",
        sizes={"train_size": 64, "eval_size": 8},
        sft={"train": {"steps": 2, "prompts_per_step": 4}, "backend": {"warmup_steps": 0, "total_steps": 2}},
        rl={
            "train": {"steps": 2, "prompts_per_step": 2, "group_size": 2},
            "sampling": {"max_new_tokens": 8},
        },
    )
    out = capsys.readouterr().out
    assert "[3/3]" in out and "RL gain over SFT" in out
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["seed"] == 3
    assert set(written["results"]) == {
        "SFT model",
        "after RL (logit average, deployed)",
        "after RL (trained policy alone)",
    }
    for row in written["results"].values():
        assert row["n"] == 8 and 0.0 <= row["pass@1"] <= 1.0 and 0.0 <= row["format_rate"] <= 1.0
    sft, rl = (written["results"][k]["pass@1"] for k in ("SFT model", "after RL (logit average, deployed)"))
    assert written["rl_gain_points"] == pytest.approx(100.0 * (rl - sft))
    assert Path(written["plot"]).is_file() and summary == written
    assert len((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()) == 2
    # the demo's demonstrations mix column-style working and bare answers; held-out problems are disjoint from them
    train = [json.loads(line) for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (tmp_path / "data" / "eval.jsonl").read_text().splitlines()]
    bare = [r for r in train if r["solution"] == f"\\boxed{{{r['answer']}}}"]
    assert 0 < len(bare) < len(train)
    assert all(": " in r["solution"] for r in train if r not in bare)
    assert all(": " in r["solution"] for r in held)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}


@pytest.mark.parametrize("mode", ["QUICK", "SMOKE"])
def test_each_mode_changes_valid_recipe_keys(mode: str, tmp_path: Path) -> None:
    """``--quick`` and ``--smoke`` change only keys the shipped stage recipes accept, to the values they state."""
    changes = getattr(command, mode)
    for stage, name in (("sft", "sft"), ("rl", "grpo_logit_average")):
        recipe = command.stage_recipe(
            name, command.merged({"data": {"train": str(tmp_path)}}, changes.get(stage, {}))
        )
        for table, values in changes.get(stage, {}).items():
            settings = recipe.backend.config if table == "backend" else getattr(recipe, table)
            assert {key: getattr(settings, key) for key in values} == values
    assert set(changes.get("sizes", {})) <= set(command.DEMO)


def test_quick_and_smoke_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    """``lmix demo --smoke`` parses; ``--quick --smoke`` is a usage error (exit 2)."""
    from lmix_core.cli import build_parser, main

    args = build_parser().parse_args(["demo", "--smoke"])
    assert args.smoke and not args.quick
    assert main(["demo", "--quick", "--smoke"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
