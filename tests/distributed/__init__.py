"""Multi-process launches across several torchrun agents ("nodes") on one machine."""
