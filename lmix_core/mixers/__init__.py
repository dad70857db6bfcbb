"""Built-in SFT/RL mixers (registered under ``lmix.mixers``)."""
