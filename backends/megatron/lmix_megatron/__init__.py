"""Megatron-core backend for lmix (nothing heavy is imported here)."""
