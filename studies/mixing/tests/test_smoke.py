"""Study v2 at micro sizes (the ``tiny`` preset): the pipeline end to end, the report, resuming, every recipe."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from lmix_core.compare import runner
from lmix_core.compare.methods import COMPARISONS, METHODS
from lmix_core.compare.sizes import TINY
from lmix_core.recipe import recipe_from_mapping
from studies.mixing import plan
from studies.mixing.command import run_study

SIZES = attrs.evolve(TINY, train_seeds=(0,))
ONLY = ["format", "hard", "format_worked"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("study-v2")
    results = root / "results.md"
    run_study(SIZES, root / "out", only=ONLY, results=results, log=lambda m: None)
    return {"out": root / "out", "results": results, "layout": runner.Layout(root / "out")}


def test_report_has_each_comparison_with_gate_table_and_verdict(study: dict) -> None:
    text = study["results"].read_text()
    for name in ONLY:
        assert f"### {COMPARISONS[name].title}" in text
    assert text.count("**Gate**") == 3 and text.count("**Verdict:") == 3
    # at micro sizes every gate fails, so every verdict says the claim cannot be decided, with the gate's reason
    assert text.count("cannot be decided at this scale") >= 2 and "precondition failed" in text
    assert "problems shared between files of different roles: 0" in text
    # a failed gate leaves its comparison's other methods out of the plan (though --tiny runs them anyway)
    planned = 0
    for n in ONLY:
        c = COMPARISONS[n]
        passed = json.loads(study["layout"].gate(n).read_text())["passed"]
        planned += len(c.methods if passed else c.gate_methods) * len(runner.cells(SIZES))
    assert f"Runs finished: {planned} of {planned} (the study is complete)." in text
    assert "| GRPO | " in text and "| LUFFY (1 demonstration per group) | " in text
    assert "`train.ppo_epochs`" not in text  # shared by the whole comparison: not a difference
    assert "| luffy | `loss.type` | 'ppo_clip' | 'pg' |" in text
    assert (study["results"].parent / "results" / "study-v2-format-curves.png").exists()


def test_results_hold_per_problem_scores_and_costs(study: dict) -> None:
    layout = study["layout"]
    result = json.loads((layout.run_dir("format", "logit_average", 0, 0) / "result.json").read_text())
    assert set(result["evals"]) == {"default", "policy"}
    assert result["evals"]["default"]["deploy"] == "combined"
    assert len(result["evals"]["default"]["task"]) == SIZES.testbed.eval
    assert len(result["evals"]["policy"]["probe"]) == SIZES.testbed.probe
    c = result["costs"]
    assert (
        c["steps"] == SIZES.post.steps and c["optimizer_steps"] == 4 * SIZES.post.steps
    )  # 2 epochs x 2 minibatches
    assert c["rollouts"] == SIZES.post.steps * SIZES.post.prompts_per_step * SIZES.post.group_size
    start = json.loads(layout.start_result("hard", 0, 0).read_text())
    assert 0.0 <= start["pass@8_train"] <= 1.0
    assert json.loads(layout.gate("hard").read_text())["gate"] == "hard_start"


def test_a_second_invocation_trains_nothing_and_reevaluates_only_what_is_missing(study: dict) -> None:
    layout = study["layout"]
    done = layout.run_dir("format", "grpo", 0, 0) / "result.json"
    stamp = done.stat().st_mtime_ns
    lost = layout.run_dir("hard", "luffy", 0, 0) / "result.json"
    lost.unlink()  # as if the study stopped after training this run, before its evaluation
    log: list[str] = []
    run_study(SIZES, study["out"], only=ONLY, results=study["results"], log=log.append)
    assert done.stat().st_mtime_ns == stamp
    assert lost.exists()
    assert not [m for m in log if "pretrain" in m or "SFT starting" in m]
    assert [m for m in log if "/" in m.split(":")[0]] == ["hard/luffy d0-t0"]


def test_every_method_of_every_comparison_is_a_valid_recipe(study: dict) -> None:
    layout = study["layout"]
    for c in plan.select(None):
        for name in c.methods:
            mapping = runner.method_recipe(layout, SIZES, c, METHODS[name], 0, 0)
            recipe = recipe_from_mapping(mapping, source=f"{c.name}/{name}")
            assert recipe.train.steps == SIZES.post.steps
        for check in plan.CHECKS[c.name]:
            assert check.a in c.methods and (check.b in c.methods or check.b == "best_static")


def test_other_sizes_in_the_same_folder_are_refused(study: dict) -> None:
    from lmix_core.errors import LmixError

    with pytest.raises(LmixError, match="other sizes"):
        runner.check_out(study["layout"], attrs.evolve(SIZES, eval_samples=3))


def test_a_folder_made_before_a_size_was_added_is_accepted_and_its_record_extended(tmp_path: Path) -> None:
    from lmix_core.errors import LmixError

    layout = runner.Layout(tmp_path)
    runner.check_out(layout, SIZES)
    record = json.loads((tmp_path / "sizes.json").read_text())
    del record["testbed"]["sft_worked"]  # as written before sft_worked.jsonl joined the testbed
    (tmp_path / "sizes.json").write_text(json.dumps(record))
    runner.check_out(layout, SIZES)
    assert (
        json.loads((tmp_path / "sizes.json").read_text())["testbed"]["sft_worked"] == SIZES.testbed.sft_worked
    )
    record["testbed"]["sft"] += 1  # a value that differs is still refused
    (tmp_path / "sizes.json").write_text(json.dumps(record))
    with pytest.raises(LmixError, match="differing: testbed"):
        runner.check_out(layout, SIZES)


def test_projection_prices_unfinished_runs_at_the_measured_cost_per_step(study: dict) -> None:
    layout = study["layout"]
    costs = json.loads((layout.run_dir("format", "grpo", 0, 0) / "result.json").read_text())["costs"]
    plan_ = [(COMPARISONS["format"], ["grpo"]), (COMPARISONS["switch"], ["sasr"])]
    ahead = runner.projection(layout, SIZES, plan_)
    assert (ahead["done"], ahead["left"]) == (1, 1)
    assert ahead["seconds"] == pytest.approx(SIZES.post.steps * costs["wall_s"] / costs["steps"])


def test_shards_by_data_seed_compose_into_one_study(tmp_path: Path) -> None:
    # two shards (one data seed each, as two processes would run them side by side), then the plain invocation:
    # it finds every run done, trains nothing and reports both data seeds
    from studies.mixing.command import main

    sizes = attrs.evolve(SIZES, data_seeds=(0, 1))
    out = tmp_path / "out"
    for d in (0, 1):
        shard = attrs.evolve(sizes, data_seeds=(d,))
        run_study(shard, out, only=["format"], results=tmp_path / f"r{d}.md", log=lambda m: None)
    log: list[str] = []
    run_study(sizes, out, only=["format"], results=tmp_path / "results.md", log=log.append)
    assert not [m for m in log if "/" in m.split(":")[0] or "pretrain" in m or "SFT starting" in m]
    assert json.loads(runner.Layout(out).gate("format").read_text())["cells"] == [[0, 0], [1, 0]]
    # a shard may decide its gate on every data seed's cells once their gate runs are done
    run_study(
        attrs.evolve(sizes, data_seeds=(1,)),
        out,
        only=["format"],
        results=tmp_path / "r1.md",
        log=lambda m: None,
        gate_sizes=sizes,
    )
    assert json.loads(runner.Layout(out).gate("format").read_text())["cells"] == [[0, 0], [1, 0]]
    timings = json.loads((out / "timings.json").read_text())["invocations"]
    assert [e["data_seeds"] for e in timings] == [[0], [1], [0, 1], [1]]
    # the command line: a shard writes its own report beside the runs, an unknown seed is refused
    tiny = tmp_path / "tiny"
    assert main(["--tiny", "--data-seeds", "0", "--only", "format", "--out", str(tiny)]) == 0
    assert (tiny / "results-d0.md").exists()
    assert main(["--tiny", "--data-seeds", "3", "--out", str(tiny)]) == 2
    assert (
        main(["--tiny", "--data-seeds", "0", "--gate-cells", "all", "--only", "format", "--out", str(tiny)])
        == 0
    )


def test_times_count_overlapping_shards_once(tmp_path: Path) -> None:
    from studies.mixing.report import _times

    inv = [
        {"started": "2026-12-06 10:00:00", "wall_s": 3600.0, "threads": 1},
        {"started": "2026-12-06 10:30:00", "wall_s": 3600.0, "threads": 1},  # a second shard, side by side
        {"started": "2026-12-06 12:00:00", "wall_s": 1800.0, "threads": 2},  # the last plain invocation
    ]
    runner.write_json(tmp_path / "timings.json", {"invocations": inv})
    text = _times(runner.Layout(tmp_path))
    assert text == (
        "3 invocation(s), 2.00 h elapsed, 2.50 h summed over processes (torch threads per process: 1, 2)"
    )


def test_each_sft_file_has_its_own_starting_model(study: dict) -> None:
    """``format`` starts from SFT on ``sft.jsonl``, ``format_worked`` from SFT on ``sft_worked.jsonl``."""
    layout = study["layout"]
    for sft_file, folder in (("sft", "start"), ("sft_worked", "start-sft_worked")):
        recipe = (layout.out / folder / "d0-t0" / "recipe.toml").read_text()
        assert f"/data/d0/{sft_file}.jsonl" in recipe, recipe
    worked = [json.loads(x) for x in (layout.data(0) / "sft_worked.jsonl").read_text().splitlines()]
    assert all(r["solution"].endswith("}") and "\\boxed{" in r["solution"] for r in worked)
    model = json.loads((layout.run_dir("format_worked", "grpo", 0, 0) / "recipe-mapping.json").read_text())
    assert model["backend"]["model"] == str(layout.out / "start-sft_worked" / "d0-t0" / "model")


def test_a_data_folder_missing_a_newer_file_gets_it_and_keeps_the_others_byte_for_byte(
    tmp_path: Path,
) -> None:
    layout = runner.Layout(tmp_path / "out")
    folder = runner.ensure_data(layout, SIZES, 0, lambda m: None)
    before = {p.name: p.read_bytes() for p in sorted(folder.glob("*.jsonl"))}
    (folder / "sft_worked.jsonl").unlink()  # a folder written before sft_worked.jsonl joined the testbed
    log: list[str] = []
    runner.ensure_data(layout, SIZES, 0, log.append)
    assert log and {p.name: p.read_bytes() for p in sorted(folder.glob("*.jsonl"))} == before


def test_time_to_go_counts_only_the_runs_a_failed_gate_leaves(tmp_path: Path) -> None:
    from lmix_core.compare.sizes import QUICK
    from studies.mixing.command import _to_run

    layout = runner.Layout(tmp_path)
    narrow = COMPARISONS["narrow_early"]
    assert _to_run(layout, QUICK, narrow) == narrow.methods  # the gate has not run yet
    runner.write_json(layout.gate(narrow.name), {"passed": False})
    assert _to_run(layout, QUICK, narrow) == ("sft",)
    assert _to_run(layout, SIZES, narrow) == narrow.methods  # --tiny runs every method whatever its gate
