"""Built-in reward verifiers (registered under ``lmix.rewards``)."""
