"""Studies run with lmix from a checkout of this repository (not part of the installed packages).

* :mod:`studies.seed_papers`: the seed papers' SFT/RL comparisons at CPU scale (``python -m studies.seed_papers``,
  results in ``docs/seed-study.md``), replaced by study v2;
* :mod:`studies.mixing`: study v2, the testbed comparisons of ``docs/study-design.md`` (``python -m studies.mixing``,
  report in ``docs/results.md``).
"""
