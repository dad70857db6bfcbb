"""Study v2: SFT/RL mixing methods compared on the lmix testbed (``python -m studies.mixing``).

The testbed (:mod:`lmix_core.testbed`) and the comparison machinery (:mod:`lmix_core.compare`) are part of the
library; this package holds the study's plan (which comparisons, which checks decide each claim), its command and
its report writer. The design is in ``docs/study-design.md``.
"""
