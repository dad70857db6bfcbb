"""The whole study at micro sizes (the ``smoke`` preset): every run, the tables, the markdown, resuming.

One module-scoped study runs every comparison for seed 0 (about half a minute on 2 cores); the tests then read its
outputs, extend it with a second seed for comparison 3 (only the new runs train), and check that finished work is
skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest

from lmix_core.errors import LmixError
from studies.seed_papers import plan, report
from studies.seed_papers.command import main, run_study
from studies.seed_papers.sizes import load_sizes
from studies.seed_papers.stages import Layout

BANNER = "> Replaced by study v2: the page's banner, kept as it is.\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("study")
    results = root / "docs" / "seed-study.md"
    results.parent.mkdir()
    results.write_text(f"# The seed papers study\n\n{BANNER}")
    sizes = load_sizes("smoke")
    out = run_study(sizes, root / "out", results_md=results, log=lambda m: None)
    return {"root": root, "out": root / "out", "results": results, "sizes": sizes, "runs": out["runs"]}


def _tables(out: Path) -> list[dict]:
    return json.loads((out / "report" / "tables.json").read_text())


def _seed0_tables(study: dict) -> list[dict]:
    """The tables of seed 0 alone, whatever other tests added to the folder since."""
    return report.aggregate(Layout(study["out"]), study["sizes"], (0,))


def test_every_run_trained_and_was_evaluated(study):
    """22 runs, each with a model, metrics, a command and held-out task and probe results for its deployments."""
    assert sorted(r["run"] for r in study["runs"]) == sorted(plan.RUNS)
    for result in study["runs"]:
        run_dir = Layout(study["out"]).run_dir(0, result["run"])
        assert (run_dir / "model" / "config.json").exists() and (run_dir / "metrics.jsonl").exists()
        assert (
            (run_dir / "command.txt")
            .read_text()
            .startswith(f"lmix run studies/seed_papers/recipes/{result['recipe']}.toml")
        )
        assert set(result["evals"]) == set(plan.RUNS[result["run"]].deployments)
        for ev in result["evals"].values():
            assert (
                ev["task"]["n"] == study["sizes"].data.eval_size
                and ev["probe"]["n"] == study["sizes"].data.probe_size
            )
        assert result["train_s"] > 0
    la = next(r for r in study["runs"] if r["run"] == "grpo_logit_average@sft")
    assert (la["evals"]["default"]["deploy"], la["evals"]["policy"]["deploy"]) == ("combined", "policy")
    for i in (1, 2, 3):  # the kept pretraining checkpoints are HF folders
        assert (study["out"] / "pretrain" / "seed0" / f"ck{i}" / "config.json").exists()


def test_tables_have_the_comparisons_rows_and_fractions(study):
    """tables.json: one table per comparison with the plan's rows; fractions in [0, 1], NLLs positive, n = 1."""
    assert [t["number"] for t in _tables(study["out"])] == [1, 2, 3, 4]  # written by the report
    tables = _seed0_tables(study)
    assert [t["number"] for t in tables] == [1, 2, 3, 4]
    for table, comp in zip(tables, plan.COMPARISONS, strict=True):
        assert [r["label"] for r in table["rows"]] == [row.label for row in comp.rows]
        for row in table["rows"]:
            m = row["metrics"]
            for name in ("pass@1", "pass@k", "format", "probe EM"):
                assert m[name]["n"] == 1 and 0.0 <= m[name]["mean"] <= 1.0, (row["key"], name)
            for name in ("probe NLL", "held-out NLL"):
                assert m[name]["mean"] > 0 and math.isfinite(m[name]["mean"])
    assert len(tables[1]["rows"]) == 15  # 3 checkpoints x (pretrained, RL, SFT, SFT->RL, parallel average)


def test_markdown_keeps_the_banner_and_marks_the_discussion(study):
    """The study's block is appended after the page's banner; the discussion is a placeholder, no numbers; the
    figures are in a folder named after the page (``docs/seed-study/``)."""
    text = study["results"].read_text()
    assert BANNER in text and text.index(BANNER) < text.index("<!-- lmix-study:smoke:begin -->")
    for n in (1, 2, 3, 4):
        assert f"### Comparison {n}:" in text
    assert "| method | n | pass@1 | pass@2 | format | probe EM |" in text
    discussion = text.split("<!-- lmix-study:smoke:discussion -->", 1)[1]
    assert "To be written after the run." in discussion and not any(ch.isdigit() for ch in discussion)
    assert "### Hardware and times" in text and "nproc" in text and "torch" in text
    assert (
        "lmix run studies/seed_papers/recipes/pretrain.toml" in text
        and "python -m studies.seed_papers --smoke" in text
    )
    images = [line[line.index("(") + 1 : -1] for line in text.splitlines() if line.startswith("![")]
    assert images and all(img.startswith("seed-study/") for img in images)
    assert all((study["results"].parent / img).exists() for img in images)


def test_rerun_skips_finished_runs_and_adds_a_seed(study, monkeypatch):
    """Seeds 0 and 1 on comparison 3: only seed 1's four runs train; the block is replaced, the discussion kept."""
    import lmix_core.train.run as run_module

    calls: list[str] = []
    real_train = run_module.train

    def counting_train(recipe, out_dir, **kwargs):  # noqa: ANN001, ANN003
        calls.append(Path(out_dir).name)
        return real_train(recipe, out_dir, **kwargs)

    monkeypatch.setattr(run_module, "train", counting_train)
    seed0 = study["out"] / "seed0" / "sasr@ck3" / "result.json"
    before = seed0.stat().st_mtime_ns
    results = study["root"] / "docs" / "results-two-seeds.md"
    results.write_text(
        study["results"].read_text().replace("To be written after the run.", "Written by hand.")
    )
    sizes = attrs.evolve(study["sizes"], seeds=(0, 1))
    run_study(sizes, study["out"], only=[3], results_md=results, log=lambda m: None)
    assert sorted(calls) == sorted(r.name for r in plan.runs_for(plan.select([3])))
    assert seed0.stat().st_mtime_ns == before
    rows = {r["key"]: r for r in _tables(study["out"])[2]["rows"]}
    assert rows["sasr@ck3"]["metrics"]["pass@1"]["n"] == 2 and rows["sasr@ck3"]["seeds"] == [0, 1]
    assert rows["base@ck3"]["metrics"]["pass@1"]["n"] == 1  # one shared pretraining
    text = results.read_text()
    assert text.count("<!-- lmix-study:smoke:begin -->") == 1 and "Written by hand." in text
    assert "## Study, smoke sizes" in text and BANNER in text and " ± " in text

    calls.clear()
    (study["out"] / "seed1" / "sasr@ck3" / "result.json").unlink()  # trained, not evaluated: evaluate only
    run_study(sizes, study["out"], only=[3], write_report=False, log=lambda m: None)
    assert calls == [] and (study["out"] / "seed1" / "sasr@ck3" / "result.json").exists()


def test_out_folder_with_other_sizes_is_refused(study):
    """Results of different sizes never mix in one folder."""
    other = attrs.evolve(study["sizes"], post=attrs.evolve(study["sizes"].post, steps=3))
    with pytest.raises(LmixError, match="other sizes.*post"):
        run_study(other, study["out"], write_report=False, log=lambda m: None)


def test_command_line(study, capsys):
    """--report-only regenerates from the folder; bad --only and --seeds exit 2 with a message."""
    results = study["root"] / "again.md"
    assert main(["--smoke", "--out", str(study["out"]), "--report-only", "--results", str(results)]) == 0
    assert "<!-- lmix-study:smoke:begin -->" in results.read_text()
    assert "comparison 4" in capsys.readouterr().out
    assert main(["--smoke", "--out", str(study["out"]), "--only", "7"]) == 2
    assert "'--only' must name comparisons" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--seeds", "a,b"])
