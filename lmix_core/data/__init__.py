"""Datasets: local jsonl/json/parquet loading with column mappings and schema adapters."""
