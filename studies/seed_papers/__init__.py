"""The seed papers study: their SFT/RL comparisons, reproduced at CPU scale with lmix's own recipes.

* :mod:`studies.seed_papers.sizes`: every size and budget, from ``sizes.toml`` (presets ``full``, ``quick``, ``smoke``);
* :mod:`studies.seed_papers.plan`: the study matrix (runs, their starting models, the comparisons' table rows);
* :mod:`studies.seed_papers.stages`: data, pretraining with kept checkpoints, post-training runs and their evaluation;
* :mod:`studies.seed_papers.report`: mean ± std tables, plots and the study's sections of ``docs/seed-study.md``;
* :mod:`studies.seed_papers.command`: ``python -m studies.seed_papers [--quick] [--out DIR] [--seeds ...] [--only ...]``.

The recipes are in ``studies/seed_papers/recipes/``; the results and their discussion in ``docs/seed-study.md``.
Study v2 (:mod:`studies.mixing`) replaced this study; its report is ``docs/results.md``.
"""
