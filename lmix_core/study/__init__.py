"""The study of issue 7: the seed papers' SFT/RL comparisons, reproduced at CPU scale with lmix's own recipes.

* :mod:`lmix_core.study.sizes`: every size and budget, from ``sizes.toml`` (presets ``full``, ``quick``, ``smoke``);
* :mod:`lmix_core.study.plan`: the study matrix (runs, their starting models, the comparisons' table rows);
* :mod:`lmix_core.study.stages`: data, pretraining with kept checkpoints, post-training runs and their evaluation;
* :mod:`lmix_core.study.report`: mean ± std tables, plots and the study's section of ``docs/results.md``;
* :mod:`lmix_core.study.command`: ``python -m lmix_core.study [--quick] [--out DIR] [--seeds ...] [--only ...]``.

The recipes are in ``recipes/study/``; the results and their discussion in ``docs/results.md``.
"""
