"""The study testbed: disjoint synthetic data (:mod:`lmix_core.testbed.data`) and the regimes built on it
(:mod:`lmix_core.testbed.regimes`), one per claim about mixing SFT and RL."""
