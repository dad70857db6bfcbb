"""Hiding transformers' per-call progress bars (loading and writing shards), which would drown a run's own output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Turn transformers' progress bars off inside the block, and back on after it if they were on."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
