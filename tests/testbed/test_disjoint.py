"""The testbed's files share no problem: by construction (role partition) and as checked on written files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmix_core.demo import task
from lmix_core.errors import ConfigError
from lmix_core.testbed.data import (
    FILE_ROLES,
    FILES,
    ROLE_BUCKETS,
    TestbedSizes,
    by_role,
    overlaps,
    problem_keys,
    role_of,
    write_testbed,
)

SIZES = TestbedSizes(corpus_documents=3000, sft=300, rl=300, rl_hard=200, eval=500, eval_hard=200, probe=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_testbed(tmp_path_factory.mktemp("testbed"), seed=1, sizes=SIZES)


def test_role_buckets_tile_the_hash_range_and_split_keys_in_proportion():
    edges = sorted(ROLE_BUCKETS.values())
    assert edges[0][0] == 0 and edges[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
    keys = [f"Compute {a}+{b}." for a in range(1, 100) for b in range(1, 60)]
    counts = by_role({"prompt": k} for k in keys)
    for role, (lo, hi) in ROLE_BUCKETS.items():
        assert counts[role] / len(keys) == pytest.approx((hi - lo) / 1000, abs=0.02)


def test_written_files_share_no_problem_and_print_the_figures(files: dict[str, Path]):
    figures = overlaps(files)
    print(json.dumps(figures, indent=1))  # the figures docs/results.md shows
    assert set(figures["pairs"]) == {
        f"{a}|{b}" for i, a in enumerate(FILES) for b in FILES[i + 1 :] if FILE_ROLES[a] != FILE_ROLES[b]
    }
    assert all(n == 0 for n in figures["pairs"].values()), figures["pairs"]
    assert figures["sizes"]["eval"] == 500 and figures["sizes"]["probe"] == 300
    assert (
        figures["sizes"]["corpus"] >= 3000 * 0.5
    )  # one problem per solution document, more per fact document
    for name, path in files.items():
        if name != "corpus":
            rows = [json.loads(x) for x in path.read_text().splitlines()]
            assert by_role(rows) == {FILE_ROLES[name]: len(rows)}


def test_the_check_finds_an_overlap_when_there_is_one(tmp_path: Path, files: dict[str, Path]):
    # the old study's data (demo task, train split) drawn the same way twice: the check must see what they share
    rows = task.generate(300, levels=(1,), seed=0, split="train", style="columns")
    leaked = task.write_jsonl(tmp_path / "leaked.jsonl", rows[:50] + task.generate(50, levels=(1,), seed=9))
    corpus = task.write_jsonl(tmp_path / "corpus.jsonl", [f"{r['prompt']}\n{r['solution']}" for r in rows])
    figures = overlaps({"corpus": corpus, "eval": leaked})
    assert figures["pairs"]["corpus|eval"] >= 50


def test_problem_keys_read_prompts_and_fact_lines():
    text = "Compute 84+8.\n84+8: 4+8=12, 8+0+1=9, 92\nAnswer: 92\n\n7*8=56\nReverse: abc\ncba"
    assert problem_keys(text) == {"Compute 84+8.", "Compute 7*8.", "Reverse: abc"}
    assert role_of("Compute 84+8.") == role_of("Compute 84+8.")


def test_sft_format_differs_from_the_corpus_format(files: dict[str, Path]):
    sft = [json.loads(x) for x in files["sft"].read_text().splitlines()]
    corpus = [json.loads(x)["text"] for x in files["corpus"].read_text().splitlines()]
    assert all(r["solution"].endswith(f"\\boxed{{{r['answer']}}}") for r in sft)
    assert 0.35 < sum("\n" not in r["solution"] for r in sft) / len(sft) < 0.65  # about half are bare answers
    solved = [t for t in corpus if t.startswith("Compute ")]
    assert solved and all("\\boxed" not in t and "\nAnswer: " in t for t in solved)
    hard = [json.loads(x) for x in files["rl_hard"].read_text().splitlines()]
    assert {r["level"] for r in hard} == {5, 6}


@pytest.mark.parametrize("preset", ["full", "quick"])
def test_every_presets_testbed_can_be_drawn(preset: str):
    # the full sizes once asked for more distinct level-1 problems than the role partition holds; drawing them is
    # the first thing the study does, so a preset that cannot be drawn must fail here, not an hour into a run
    from lmix_core.compare.sizes import PRESETS
    from lmix_core.testbed.data import build_testbed

    sizes = PRESETS[preset].testbed
    rows = build_testbed(0, sizes)
    assert len(rows["corpus"]) == sizes.corpus_documents
    assert len(rows["sft_narrow"]) == sizes.sft_narrow and {r["level"] for r in rows["sft_narrow"]} == {1}
    for name in ("sft", "sft_narrow", "rl", "rl_hard", "eval", "eval_hard", "probe"):
        prompts = [r["prompt"] for r in rows[name]]
        assert len(set(prompts)) == len(prompts), name  # every file but the corpus holds distinct problems


def test_only_the_corpus_repeats_problems():
    from lmix_core.testbed.data import arithmetic

    kw = dict(seed=0, role="pretrain", name="x", levels=(1,), style="columns", answer_format="answer")
    with pytest.raises(ConfigError, match="cannot draw 20000 distinct pretrain problems"):
        arithmetic(20_000, **kw)  # type: ignore[arg-type]
    rows = arithmetic(20_000, distinct=False, **kw)  # type: ignore[arg-type]
    assert len(rows) == 20_000 > len({r["prompt"] for r in rows})
    assert by_role(rows) == {"pretrain": 20_000}
