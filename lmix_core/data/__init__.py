"""Datasets: local jsonl/json/parquet loading with column mappings and schema adapters."""

from pathlib import Path

FIXTURES_DIR = Path(__file__).parent / "fixtures"
"""Small hand-written files in each supported schema, shipped with the package (for tests and examples)."""
