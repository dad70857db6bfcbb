"""The embedded demo: a synthetic arithmetic task, a tiny model and tokenizer, SFT then GRPO."""
