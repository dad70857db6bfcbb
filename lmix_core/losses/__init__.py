"""Built-in policy losses (registered under ``lmix.losses``)."""
