"""Built-in policy combiners (registered in pyproject.toml under ``lmix.combiners``)."""
