"""``lmix compare``: run recipes beside built-in baselines on a testbed regime and tabulate paired confidence
intervals (:mod:`lmix_core.compare.stats`, :mod:`lmix_core.compare.runner`, :mod:`lmix_core.compare.table`)."""
