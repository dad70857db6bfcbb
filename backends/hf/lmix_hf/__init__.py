"""Hugging Face transformers backend for lmix."""
