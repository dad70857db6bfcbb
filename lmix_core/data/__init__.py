"""Datasets: local jsonl/json/parquet loading with column mappings and schema adapters."""

from importlib.resources import files
from pathlib import Path

FIXTURES_DIR = Path(str(files(__name__) / "fixtures"))
"""Small hand-written files in each supported schema, shipped with the package (for tests and examples)."""
