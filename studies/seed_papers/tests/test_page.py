"""The page the study writes by default, ``docs/seed-study.md``: regenerating it replaces its blocks in place.

Study v2 rewrites ``docs/results.md`` whole, so the seed study must never write there; and a page without the
study's markers would get a second copy of every section appended on the next ``--report-only``.
"""

from __future__ import annotations

import re

from studies.seed_papers import report, stages
from studies.seed_papers.command import DEFAULT_RESULTS, build_parser

PRESETS = ("full", "quick")


def test_the_default_page_is_seed_study_md_not_results_md():
    """full and quick write docs/seed-study.md; study v2's docs/results.md holds none of the seed study's markers."""
    assert DEFAULT_RESULTS == stages.REPO / "docs" / "seed-study.md"
    assert "docs/seed-study.md" in build_parser().format_help()
    v2_page = (stages.REPO / "docs" / "results.md").read_text(encoding="utf-8")
    assert "lmix-study:" not in v2_page and "(seed-study.md)" in v2_page


def test_the_page_holds_each_presets_block_once_and_its_images():
    """One begin/end pair and one hand-written discussion per preset; every image the page shows exists."""
    text = DEFAULT_RESULTS.read_text(encoding="utf-8")
    for preset in PRESETS:
        assert text.count(report.begin_marker(preset)) == 1 and text.count(report.end_marker(preset)) == 1
        assert text.count(f"<!-- lmix-study:{preset}:discussion -->") == 1
        assert report.PLACEHOLDER not in text  # both discussions are written
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 20 and all(img.startswith("seed-study/") for img in images)
    missing = [img for img in images if not (DEFAULT_RESULTS.parent / img).exists()]
    assert not missing


def test_regenerating_a_block_keeps_the_rest_of_the_page(tmp_path):
    """write_markdown on a copy of the page: the quick block is replaced; the banner, the full block, both
    discussions and the reproducibility section stay byte for byte."""
    page = tmp_path / "seed-study.md"
    original = DEFAULT_RESULTS.read_text(encoding="utf-8")
    page.write_text(original, encoding="utf-8")
    report.write_markdown(page, "quick", "## Study, quick variant (regenerated)\n")
    text = page.read_text(encoding="utf-8")
    begin, end = report.begin_marker("quick"), report.end_marker("quick")
    assert text.count(begin) == 1 and "## Study, quick variant (regenerated)\n" in text
    before_block, after_block = original.split(begin)[0], original.split(end)[1]
    assert text.startswith(before_block) and text.endswith(after_block)
    assert "Replaced by study v2" in before_block
    assert "### Discussion (quick)" in after_block and "## Reproducibility" in after_block
