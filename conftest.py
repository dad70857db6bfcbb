"""Root test set-up (applies to backends/ and plugins/ too): Hypothesis profiles chosen by HYPOTHESIS_PROFILE (dev: fast default, ci: more examples)."""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "nightly", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Tiny tensors run fastest on one thread, and a loaded 2-core machine makes intra-op parallelism a large loss.
torch.set_num_threads(1)
