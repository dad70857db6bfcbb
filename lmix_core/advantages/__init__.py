"""Built-in advantage estimators (registered under ``lmix.advantages``)."""
