"""An example third-party lmix plugin."""
