"""Studies run with lmix from a checkout of this repository (not part of the installed packages).

* :mod:`studies.seed_papers`: the seed papers' SFT/RL comparisons at CPU scale (``python -m studies.seed_papers``,
  results in ``docs/results.md``).
"""
